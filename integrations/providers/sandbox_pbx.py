"""Sandbox PBX: a simulated PBX inside the portal, for trying the portal without a PBX account.

Wire format (its own, kept small and PBX-like): the PBX POSTs JSON to `/hooks/sandbox_pbx/<id>/events`
(`{"call_id", "seq", "event": ringing|answered|leg_ended|ended|recording_ready, "at", "direction", "client",
"did", "extension"}`) and asks `/hooks/sandbox_pbx/<id>/route` (`{"call_id", "client", "did"}` → `{"extension",
"name"}`) before ringing an incoming call. Every request and answer carries `X-Sandbox-Signature`: lower-case hex
HMAC-SHA256 of the exact body under the connection's issued `signing_key`.

After `ended` the adapter asks the PBX for the call's details (result, talk time, recording) with an outbox job,
as for Rostelecom's call_info; recordings, the directory, click-to-call and reconciliation are answered by the
simulated far end (integrations/providers/sandbox/farend.py), called in-process because the SSRF guard refuses
loopback. Click-to-call and the admin's "Send test call" play their calls through the real inbound view with
`sandbox_pbx.play` outbox jobs, one per webhook, due when the PBX would send it. Refused unless SANDBOX_ENABLED.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from django.utils.translation import gettext_lazy
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from integrations.phones import is_extension, to_e164_or_none
from integrations.providers.base import (
    CheckResult,
    CompactJSONRenderer,
    DirectoryEntry,
    Field,
    JobKind,
    JobSpec,
    OriginateResult,
    PbxProvider,
    ProviderError,
    ReconcileResult,
    SimulatedRequest,
    WebhookAuthError,
    WebhookInputError,
    compact_json,
    secrets_equal,
)
from integrations.providers.sandbox import DISABLED_MESSAGE, enabled, farend, require_enabled
from integrations.simulation import Timeline, build_timeline

if TYPE_CHECKING:
    from django.http import HttpRequest
    from rest_framework.request import Request

    from calls.events import NormalisedEvent
    from calls.models import Call, OriginateRequest, OutboundJob, Recording

logger = logging.getLogger("callbridge.sandbox")

DETAILS = "sandbox_pbx.call_details"
PLAY = "sandbox_pbx.play"
SIGNATURE_HEADER = "X-Sandbox-Signature"
KINDS = {
    "ringing": "ringing",
    "answered": "answered",
    "leg_ended": "leg_ended",
    "ended": "completed",
    "recording_ready": "recording_ready",
}
DIRECTIONS = {"in", "out", "internal"}
MAX_CALL_ID = 64


def signature(key: str, body: bytes) -> str:
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def order_key(moment: dt.datetime, seq: int) -> str:
    return f"{moment.astimezone(dt.UTC):%Y%m%d%H%M%S%f}:{seq:05d}"


class SandboxPbxProvider(PbxProvider):
    key = "sandbox_pbx"
    settings_fields = (
        Field(
            "users",
            "map",
            default=dict(farend.DEFAULT_USERS),
            help=gettext_lazy("The simulated PBX's directory: extension → name."),
        ),
        Field("recording_format", "choice", default="auto", choices=("auto", "wav", "mp3")),
        Field("routing_budget_ms", "int", default=800, minimum=100, maximum=10000),
    )
    secret_fields = (Field("signing_key", "secret", issued=True),)
    inbound_paths = ("events", "route")
    admin_page = "integrations.providers.sandbox.views.pbx_page"
    admin_page_title = "Sandbox PBX: calls played, send test call"
    auth_failure_status = 403
    job_kinds = {
        DETAILS: JobKind(window=dt.timedelta(minutes=2), ordered=False),
        PLAY: JobKind(window=dt.timedelta(minutes=10), ordered=False),
    }

    # ---- signatures ----
    @property
    def signing_key(self) -> str:
        return str(self.secrets.get("signing_key") or "")

    def signed_headers(self, body: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json", SIGNATURE_HEADER: signature(self.signing_key, body)}

    # ---- inbound ----
    def authenticate(self, request: HttpRequest, action: str) -> None:
        if not enabled():
            raise WebhookAuthError(DISABLED_MESSAGE)
        if not self.signing_key:
            raise WebhookAuthError("Invalid signature")
        given = (request.headers.get(SIGNATURE_HEADER) or "").strip().lower()
        if not secrets_equal(given, signature(self.signing_key, request.body)):
            logger.warning("sandbox_pbx %s/%s: signature missing or wrong", self.connection.public_id, action)
            raise WebhookAuthError("Invalid signature")

    def error_body(self, status: int, message: str) -> Any:
        return {"ok": False, "error": message}

    def parser_classes(self, action: str) -> list[type]:
        return [JSONParser]

    def renderer_classes(self, action: str) -> list[type]:
        return [CompactJSONRenderer]

    def answer(self, data: dict[str, Any]) -> Response:
        return Response(data, headers={SIGNATURE_HEADER: signature(self.signing_key, compact_json(data))})

    @staticmethod
    def read_body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request._request.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise WebhookInputError("Invalid JSON") from None
        if not isinstance(body, dict):
            raise WebhookInputError("Invalid JSON: an object is expected")
        return body

    def handle(self, request: Request, action: str) -> Response:
        if action == "events":
            self.store_events([self.to_event(self.read_body(request))])
            return self.answer({"ok": True})
        if action == "route":
            return self.handle_route(self.read_body(request))
        raise WebhookInputError(f"Unknown endpoint {action!r}")

    def handle_route(self, body: dict[str, Any]) -> Response:
        from calls.routing import resolve

        region = self.connection.tenant.region or "RU"
        caller = to_e164_or_none(str(body.get("client") or ""), region) or ""
        if not caller:
            return self.answer({"extension": "", "name": ""})
        did = to_e164_or_none(str(body.get("did") or ""), region) or ""
        call_id = str(body.get("call_id") or "")[:MAX_CALL_ID]
        try:
            decision = resolve(
                self.connection.tenant,
                caller,
                did,
                provider_call_id=call_id,
                deadline_ms=int(self.settings.get("routing_budget_ms") or 800),
                pbx_connection=self.connection,
            )
        except Exception:  # never a 5xx: the PBX would wait out its timeout and route by its own rules
            logger.exception("sandbox_pbx %s: routing failed", self.connection.public_id)
            return self.answer({"extension": "", "name": ""})
        if call_id:
            farend.routed(self.connection, call_id, decision.extension, decision.display_name)
        return self.answer({"extension": decision.extension, "name": decision.display_name})

    def to_event(self, body: dict[str, Any]) -> NormalisedEvent:
        from calls.events import NormalisedEvent

        call_id = str(body.get("call_id") or "").strip()
        if not call_id or len(call_id) > MAX_CALL_ID:
            raise WebhookInputError(f"Invalid JSON: call_id is required (at most {MAX_CALL_ID} characters)")
        event = str(body.get("event") or "")
        if event not in KINDS:
            raise WebhookInputError(f"Invalid JSON: unknown event {event!r}")
        seq = body.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise WebhookInputError("Invalid JSON: seq must be a whole number")
        try:
            moment = dt.datetime.fromisoformat(str(body.get("at") or ""))
        except ValueError:
            raise WebhookInputError("Invalid JSON: at must be an ISO 8601 time") from None
        if moment.tzinfo is None:
            raise WebhookInputError("Invalid JSON: at must carry its UTC offset")
        direction = str(body.get("direction") or "")
        if direction not in DIRECTIONS:
            raise WebhookInputError(f"Invalid JSON: unknown direction {direction!r}")
        extension = str(body.get("extension") or "").strip()
        if extension and not is_extension(extension):
            raise WebhookInputError(f"Invalid JSON: {extension!r} is not an extension")
        region = self.connection.tenant.region or "RU"
        client_raw = str(body.get("client") or "")[:200]
        kind = KINDS[event]
        return NormalisedEvent(
            provider_call_id=call_id,
            kind=kind,
            order_key=order_key(moment, seq),
            dedupe_key=f"{call_id}:{seq}:{event}:{extension}",
            timestamp=moment,
            direction=direction,  # type: ignore[arg-type]
            client_phone_raw=client_raw,
            client_phone=to_e164_or_none(client_raw, region) or "",
            external_phone=to_e164_or_none(str(body.get("did") or ""), region) or "",
            extension=extension,
            extensions=(extension,) if extension else (),
            recording_expected=True if kind == "recording_ready" else None,
            recording={"call_id": call_id} if kind in {"completed", "recording_ready"} else {},
            correlation_id=call_id,
            raw=body,
        )

    # ---- pipeline hooks ----
    def is_final(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        """`ended` plus the call details; or `ended` alone once asking for the details gave up."""
        from calls.models import OutboundJob

        if any(e.kind == "completed" and e.final for e in events):
            return True
        if not any(e.kind == "completed" for e in events):
            return False
        return OutboundJob.objects.filter(
            call=call, kind=DETAILS, status__in=[OutboundJob.DEAD, OutboundJob.FAILED]
        ).exists()

    def recording_expected(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        return any(e.recording_expected is True for e in events)

    def jobs_after_ingest(self, call: Call, new_events: Sequence[NormalisedEvent]) -> list[JobSpec]:
        ends = [e for e in new_events if e.kind == "completed" and not e.final]
        if not ends:
            return []
        payload = {"call_id": call.provider_call_id}
        return [JobSpec(DETAILS, f"details:{call.provider_call_id}", payload, call, ends[0].order_key)]

    def details_events(self, call: Call, details: dict[str, Any]) -> list[NormalisedEvent]:
        """The final `completed` event the call's details make (and the answer when the events lost it)."""
        from calls.events import NormalisedEvent

        sid = call.provider_call_id
        ended = dt.datetime.fromisoformat(details["ended_at"])
        answered_by = [x for x in details.get("answered_by") or [] if is_extension(str(x))]
        last = answered_by[-1] if answered_by else ""
        events: list[NormalisedEvent] = []
        if last and not call.answered_extensions:
            events.append(
                NormalisedEvent(
                    provider_call_id=sid,
                    kind="answered",
                    order_key=order_key(ended, 99998),
                    dedupe_key=f"{sid}:details:answered",
                    timestamp=ended,
                    extension=last,
                    extensions=(last,),
                    correlation_id=sid,
                    raw={"_from": "call details"},
                )
            )
        events.append(
            NormalisedEvent(
                provider_call_id=sid,
                kind="completed",
                order_key=order_key(ended, 99999),
                dedupe_key=f"{sid}:details",
                timestamp=ended,
                direction=details.get("direction") or "",
                extension=last,
                extensions=(last,) if last else (),
                outcome=str(details.get("result") or ""),
                talk_seconds=int(details.get("talk_seconds") or 0),
                duration_seconds=int(details.get("duration_seconds") or 0),
                recording_expected=bool(details.get("recorded")),
                recording={"call_id": sid},
                correlation_id=sid,
                final=True,
                raw=details,
            )
        )
        return events

    def unknown_call_event(self, call: Call, note: str) -> NormalisedEvent:
        from calls.events import NormalisedEvent

        ended = call.ended_at or timezone.now()
        return NormalisedEvent(
            provider_call_id=call.provider_call_id,
            kind="completed",
            order_key=order_key(ended, 99999),
            dedupe_key=f"{call.provider_call_id}:details:unknown",
            timestamp=ended,
            correlation_id=call.provider_call_id,
            final=True,
            raw={"_note": note},
        )

    # ---- outbound jobs ----
    def perform(self, job: OutboundJob) -> str:
        require_enabled()
        if job.kind == PLAY:
            status, text = farend.deliver(
                job.payload["path"], job.payload["body"].encode(), job.payload["headers"]
            )
            if not 200 <= status < 300:
                raise ProviderError(
                    f"the portal answered {status}: {text[:200]}", status=status, permanent=True
                )
            return f"{job.payload.get('description', '')}: HTTP {status} {text[:100]}".strip()
        if job.kind != DETAILS:
            return super().perform(job)
        from calls import outbox
        from calls.processor import ingest

        call = job.call
        if call is None:
            raise ProviderError("call details job without a call", permanent=True)
        details = farend.call_details(self.connection, call.provider_call_id)
        if details is None:
            # Played against another portal's sandbox, or its record was deleted: end from the events alone.
            note = "completed from events: the sandbox PBX does not know this call"
            with outbox.on_behalf_of(job):
                ingest(self.connection, [self.unknown_call_event(call, note)])
            return note
        if details["state"] == "live":
            raise ProviderError("the sandbox PBX still reports the call as live", retry_after=2)
        with outbox.on_behalf_of(job):
            ingest(self.connection, self.details_events(call, details))
        return (
            f"details: {details['result']}, talk {details['talk_seconds']} s, recorded {details['recorded']}"
        )

    def check_connection(self) -> CheckResult:
        if not enabled():
            return CheckResult(False, DISABLED_MESSAGE)
        if not self.signing_key:
            return CheckResult(False, "The sandbox PBX has no signing_key: generate one")
        entries = farend.directory(self.connection)
        played = self.connection.sandbox_calls.count()
        return CheckResult(
            True,
            f"Sandbox PBX (simulated in this portal): {len(entries)} users in its directory, {played} calls played",
            json.dumps(entries, ensure_ascii=False)[:500],
        )

    # ---- the simulated far end ----
    def list_extensions(self) -> list[DirectoryEntry]:
        return [
            DirectoryEntry(u["extension"], u["name"], u["email"]) for u in farend.directory(self.connection)
        ]

    def originate(self, request: OriginateRequest) -> OriginateResult:
        """Click-to-call: the sandbox PBX rings the extension, then the client, and plays the call's webhooks."""
        require_enabled()
        if request.extension not in farend.users(self.connection):
            raise ProviderError(
                f"the sandbox PBX has no user {request.extension!r} in its directory", permanent=True
            )
        options = {"from": request.phone, "to": request.external_phone, "extension": request.extension}
        timeline = build_timeline("click-to-call", options)
        self.play(timeline)
        return OriginateResult(timeline.call_id)

    def play(self, timeline: Timeline) -> list[SimulatedRequest]:
        """Play a call through the inbound view, each webhook an outbox job due when the PBX would send it."""
        from django.db import transaction

        from calls import outbox

        requests = self.render(timeline)
        farend.register_call(self.connection, timeline)
        due, specs = timezone.now(), []
        for index, item in enumerate(requests):
            due += dt.timedelta(seconds=item.delay_seconds)
            payload = {
                "path": item.path,
                "body": item.body.decode("ascii"),
                "headers": item.headers,
                "description": item.description,
            }
            key = f"play:{timeline.call_id}:{index:03d}"
            specs.append(JobSpec(PLAY, key, payload, order_key=f"{index:03d}", due_at=due))
        with transaction.atomic():
            outbox.create_jobs(self.connection, specs)
        return requests

    offers_test_call = True

    def send_test_call(self, scenario: str, options: dict[str, Any]) -> str:
        require_enabled()
        timeline = build_timeline(scenario, options)
        requests = self.play(timeline)
        seconds = sum(r.delay_seconds for r in requests)
        return (
            f"test call {timeline.call_id} ({scenario}, {timeline.client} → {timeline.extensions[0]}) is playing: "
            f"{len(requests)} webhooks over {seconds:.0f} s; watch the sandbox CRM's inbox"
        )

    def recording_link(self, recording: Recording) -> str:
        require_enabled()
        return farend.recording_url(self.connection, self._recording_call_id(recording))

    def recording_content(self, recording: Recording) -> tuple[bytes, str] | None:
        return farend.recording(self.connection, self._recording_call_id(recording))

    @staticmethod
    def _recording_call_id(recording: Recording) -> str:
        return str((recording.hints or {}).get("call_id") or recording.call.provider_call_id)

    def reconcile(self, call: Call) -> ReconcileResult:
        details = farend.call_details(self.connection, call.provider_call_id)
        if details is None:
            return ReconcileResult("unknown", note="the sandbox PBX never played this call")
        if details["state"] == "live":
            return ReconcileResult("live", note="the sandbox PBX says the call is still going on")
        return ReconcileResult(
            "completed", tuple(self.details_events(call, details)), "from the call details"
        )

    # ---- simulation ----
    def simulate(self, scenario: str, options: dict[str, Any]) -> list[SimulatedRequest]:
        require_enabled()
        timeline = build_timeline(scenario, options)
        farend.register_call(self.connection, timeline)
        return self.render(timeline)

    def render(self, timeline: Timeline) -> list[SimulatedRequest]:
        """The PBX's own signed requests for one timeline."""
        base = f"/hooks/{self.key}/{self.connection.public_id}/"
        out = []
        seq = 0
        for index, step in enumerate(timeline.steps):
            delay = timeline.delay_before(index)
            if step.kind == "route":
                body = compact_json(
                    {"call_id": timeline.call_id, "client": timeline.client, "did": timeline.did}
                )
                out.append(
                    SimulatedRequest(
                        base + "route",
                        body,
                        self.signed_headers(body),
                        delay,
                        "route: whose caller is this?",
                        timeline.call_id,
                    )
                )
                continue
            seq += 1
            event = "recording_ready" if step.kind == "recording" else step.kind
            data = {
                "call_id": timeline.call_id,
                "seq": seq,
                "event": event,
                "at": timeline.moment(step).isoformat(),
                "direction": timeline.direction,
                "client": timeline.client,
                "did": timeline.did,
                "extension": step.extension,
            }
            body = compact_json(data)
            what = f"{event} {step.extension}".strip()
            out.append(
                SimulatedRequest(
                    base + "events", body, self.signed_headers(body), delay, what, timeline.call_id
                )
            )
        return out
