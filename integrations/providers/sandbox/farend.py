"""The simulated PBX itself: its memory of the calls it played, its directory, call details, click-to-call,
recordings, and the delivery of its webhooks to the portal.

The sandbox PBX adapter calls these functions in-process (the SSRF guard refuses loopback); views.py answers the
same functions over HTTP under /sandbox/pbx/<public_id>/.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.core.handlers.wsgi import WSGIRequest
from django.urls import Resolver404, resolve
from django.utils import timezone

from integrations.providers.base import SIDES, ProviderError, provider_class, public_base_url
from integrations.providers.sandbox import audio, require_enabled
from integrations.providers.sandbox.models import SandboxCall

if TYPE_CHECKING:
    from integrations.models import PbxConnection
    from integrations.simulation import Timeline

logger = logging.getLogger("callbridge.sandbox")

DEFAULT_USERS = {"101": "Anna Sandbox", "102": "Boris Sandbox", "103": "Vera Sandbox"}
# How long after the end of a call its recording is being "prepared" (a late recording takes longer).
RECORDING_DELAY = dt.timedelta(seconds=0)
LATE_RECORDING_DELAY = dt.timedelta(seconds=4)


class NotReady(ProviderError):
    """The recording exists but is not written yet: retried, as for a real PBX's 404 while preparing."""


def users(connection: PbxConnection) -> dict[str, str]:
    configured = (connection.settings or {}).get("users")
    return dict(configured) if configured else dict(DEFAULT_USERS)


def directory(connection: PbxConnection) -> list[dict[str, str]]:
    require_enabled()
    return [
        {"extension": number, "name": name, "email": f"ext{number}@sandbox.invalid"}
        for number, name in sorted(users(connection).items())
    ]


def register_call(connection: PbxConnection, timeline: Timeline) -> SandboxCall:
    """The PBX starts playing a call: remember its plan (call details and recordings are answered from it)."""
    require_enabled()
    delay = LATE_RECORDING_DELAY if timeline.late_recording else RECORDING_DELAY
    ready = max(timeline.ended_at, timezone.now()) + delay if timeline.recorded else None
    if timeline.fast and ready is not None:
        ready = timezone.now() + delay
    call, _ = SandboxCall.objects.update_or_create(
        pbx_connection=connection,
        call_id=timeline.call_id,
        defaults={"scenario": timeline.scenario, "plan": timeline.as_plan(), "recording_ready_at": ready},
    )
    return call


def find(connection: PbxConnection, call_id: str) -> SandboxCall | None:
    return SandboxCall.objects.filter(pbx_connection=connection, call_id=call_id).first()


def routed(connection: PbxConnection, call_id: str, extension: str, name: str) -> None:
    """The PBX asked whose caller this is and heard the answer (shown in the call's details)."""
    SandboxCall.objects.filter(pbx_connection=connection, call_id=call_id).update(
        routed_extension=extension[:6], routed_name=name[:200]
    )


def call_details(connection: PbxConnection, call_id: str) -> dict[str, Any] | None:
    """What the PBX knows of one call: None when it never played it; state "live" until its planned end."""
    require_enabled()
    call = find(connection, call_id)
    if call is None:
        return None
    plan = call.plan
    ended_at = dt.datetime.fromisoformat(plan["ended_at"])
    live = timezone.now() < ended_at
    details = {
        "call_id": call.call_id,
        "state": "live" if live else "completed",
        "scenario": call.scenario,
        "direction": plan["direction"],
        "client": plan["client"],
        "did": plan["did"],
        "start": plan["start"],
        "ended_at": plan["ended_at"],
        "rang": plan["rang"],
        "answered_by": plan["answered_by"],
        "routed_extension": call.routed_extension,
        "routed_name": call.routed_name,
    }
    if not live:
        details.update(
            result=plan["result"],
            talk_seconds=plan["talk_seconds"],
            duration_seconds=plan["duration_seconds"],
            recorded=plan["recorded"],
        )
    return details


def recording_type(connection: PbxConnection) -> str:
    """WAV unless asked otherwise, or unless an active CRM of the tenant plays only MP3 (WireCRM)."""
    chosen = (connection.settings or {}).get("recording_format") or "auto"
    if chosen in {"wav", "mp3"}:
        return audio.MP3 if chosen == "mp3" else audio.WAV
    from integrations.models import CrmConnection

    for key in CrmConnection.objects.filter(tenant_id=connection.tenant_id, active=True).values_list(
        "provider", flat=True
    ):
        playable = provider_class(key).playable_types if key in SIDES else ()
        if playable and audio.WAV not in playable and audio.MP3 in playable:
            return audio.MP3
    return audio.WAV


def recording(connection: PbxConnection, call_id: str) -> tuple[bytes, str]:
    """The recording of one call, generated (its length is the talk time, capped)."""
    require_enabled()
    call = find(connection, call_id)
    if call is None or not call.plan.get("recorded"):
        raise ProviderError(
            f"the sandbox PBX has no recording of call {call_id!r}", status=404, permanent=True
        )
    if call.recording_ready_at and timezone.now() < call.recording_ready_at:
        raise NotReady("the sandbox PBX is still preparing the recording", status=404)
    content_type = recording_type(connection)
    seed = sum(call_id.encode()) % 997
    return audio.render(content_type, call.plan.get("talk_seconds") or 5, seed), content_type


def recording_url(connection: PbxConnection, call_id: str) -> str:
    return f"{public_base_url()}/sandbox/pbx/{connection.public_id}/recordings/{call_id}"


# ---------------------------------------------------------------------------------------------------------
# Webhook delivery
# ---------------------------------------------------------------------------------------------------------


def deliver(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST one webhook to the portal's own inbound view, in-process: the URL is resolved and the view runs
    exactly as for a request from outside (raw-body signature check, the provider's parser and answer); only the
    network is skipped, because a worker may not be able to reach PUBLIC_BASE_URL and the SSRF guard refuses
    loopback anyway."""
    base = urlsplit(public_base_url())
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": base.hostname or "localhost",
        "SERVER_PORT": str(base.port or (443 if base.scheme == "https" else 80)),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": base.netloc,
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": headers.get("Content-Type", "application/json"),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": base.scheme or "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        if name.lower() != "content-type":
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    try:
        match = resolve(path)
    except Resolver404:
        return 404, "no such inbound URL"
    request = WSGIRequest(environ)
    response = match.func(request, *match.args, **match.kwargs)
    if hasattr(response, "render"):
        response.render()
    return response.status_code, response.content.decode("utf-8", errors="replace")[:500]
