"""Test providers for the pipeline: a PBX that posts JSON events and a CRM that receives one HTTP POST per
notice. They exercise the provider interface exactly as real adapters do; outbound HTTP goes through
`requests`, faked with `responses` or a loopback server."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import requests
from rest_framework.response import Response

from calls.events import NormalisedEvent
from integrations.providers.base import (
    FINAL,
    POPUP,
    CrmProvider,
    Field,
    JobSpec,
    OriginateResult,
    PbxProvider,
    ProviderError,
    ReconcileResult,
    RoutingAnswer,
    WebhookAuthError,
    WebhookInputError,
    secrets_equal,
)


class FakePbx(PbxProvider):
    """Body: {"events": [{"call": "c1", "kind": "ringing", "seq": 1, "ext": "101", ...}]}, header X-Token."""

    key = "fakepbx"
    secret_fields = (Field("token", "secret"),)
    settings_fields = (Field("api_url", "url", default="https://pbx.example.test"),)
    inbound_paths = ("events",)

    def authenticate(self, request: Any, action: str) -> None:
        if not secrets_equal(request.headers.get("X-Token"), self.secrets.get("token")):
            raise WebhookAuthError("Invalid token")

    def handle(self, request: Any, action: str) -> Response:
        try:
            items = json.loads(request.body)["events"]
            events = [to_event(item) for item in items]
        except (ValueError, KeyError, TypeError) as exc:
            raise WebhookInputError("Invalid JSON") from exc
        self.store_events(events)  # as a real webhook: the inbox processor applies them
        return Response({"ok": True})

    def reconcile(self, call: Any) -> ReconcileResult:
        """What the connection's `reconcile` setting says: completed (answered), live or unknown."""
        status = self.connection.settings.get("reconcile", "unknown")
        if status == "completed":
            end = {"call": call.provider_call_id, "kind": "completed", "seq": 90, "outcome": "answered"}
            return ReconcileResult("completed", (to_event(end),), note="from the fake PBX's records")
        return ReconcileResult(status, note=f"the fake PBX says {status}")

    def originate(self, request: Any) -> OriginateResult:
        response = requests.post(
            f"{self.settings['api_url']}/call", json={"ext": request.extension}, timeout=2
        )
        if response.status_code != 200:
            raise ProviderError("PBX refused", status=response.status_code, permanent=True)
        return OriginateResult(response.json()["id"])


def to_event(item: dict[str, Any]) -> NormalisedEvent:
    seq = int(item.get("seq", 0))
    ts = dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=seq)
    return NormalisedEvent(
        provider_call_id=item["call"],
        kind=item["kind"],
        order_key=f"{seq:08d}",
        dedupe_key=f"{item['call']}:{seq}:{item['kind']}",
        timestamp=ts,
        direction=item.get("direction", "in"),
        location=item.get("location", ""),
        client_phone="+79161234567",
        client_phone_raw="89161234567",
        external_phone="+74951234567",
        extension=item.get("ext", ""),
        outcome=item.get("outcome", ""),
        recording_expected=item.get("recorded"),
        correlation_id=item.get("corr", ""),
        raw=item,
    )


class FakeCrm(CrmProvider):
    key = "fakecrm"
    settings_fields = (
        Field("url", "url", default="https://crm.example.test/hook"),
        Field("delay", "int", default=0),
    )
    secret_fields = (Field("token", "secret"),)
    job_kinds = {"fake.popup": POPUP, "fake.final": FINAL}

    def jobs_for(self, call: Any, notices: Any) -> list[JobSpec]:
        specs = []
        for n in notices:
            final = {"completed", "leg_cancelled", "leg_completed", "recording_stored"}
            kind = "fake.final" if n.kind in final else "fake.popup"
            payload: dict[str, Any] = {"notice": n.kind, "ext": n.extension}
            if n.talk_seconds is not None:
                payload["talk_seconds"] = n.talk_seconds
            specs.append(JobSpec(kind, f"{call.pk}:{n.kind}:{n.extension}", payload, call, n.order_key))
        return specs

    def perform(self, job: Any) -> str:
        body = {
            "notice": job.payload["notice"],
            "ext": job.payload["ext"],
            "result": job.call.result if job.call else "",
        }
        try:
            response = requests.post(self.settings["url"], json=body, timeout=5)
        except requests.RequestException as exc:
            raise ProviderError(f"connection failed: {exc}") from exc
        if response.status_code in (401, 403):
            raise ProviderError(
                "Invalid token", status=response.status_code, permanent=True, flag_connection=True
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise ProviderError(f"HTTP {response.status_code}", status=response.status_code)
        if response.status_code >= 400:
            raise ProviderError(f"HTTP {response.status_code}", status=response.status_code, permanent=True)
        return response.text[:200]

    def lookup(self, query: Any, timeout: float) -> RoutingAnswer | None:
        delay = float(self.connection.settings.get("delay", 0))
        if delay:
            time.sleep(min(delay, 10))
        if self.connection.settings.get("fail"):
            raise ProviderError("the fake CRM fails its lookups")
        answer = self.connection.settings.get("answer")
        return RoutingAnswer(**answer) if answer else None

    @classmethod
    def clean_settings(cls, data: Any) -> dict[str, Any]:
        return dict(data or {})


def register(monkeypatch: Any, key: str, dotted_path: str, side: str) -> None:
    """Put a test provider in the explicit registry for one test (undone by monkeypatch afterwards)."""
    from integrations.providers import base

    monkeypatch.setitem(base.REGISTRY, key, dotted_path)
    monkeypatch.setitem(base.SIDES, key, side)
    monkeypatch.setitem(base.LABELS, key, f"Test {key}")
