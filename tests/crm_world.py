"""What the Planfix and WireCRM adapter tests share: a fake PBX whose calls are played as normalised events, the
outbox delivering one CRM connection's jobs inline (relay passes, as beat would run them), and a stored
recording. Only HTTP is faked (with `responses`); the pipeline runs for real."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.utils import timezone

from calls import outbox
from calls.events import NormalisedEvent
from calls.models import Call, Recording
from calls.processor import ingest
from calls.services import recording_stored
from integrations.providers import base
from tests.pipeline.fake_providers import register

FIXTURES = Path(__file__).parent / "fixtures"
PBX_URL = "https://pbx.example.test"
BASE_TIME = dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.UTC)


def register_fake_pbx(monkeypatch: Any) -> None:
    """The pipeline tests' fake PBX (tests/pipeline/fake_providers.py) under its registry key."""
    register(monkeypatch, "fakepbx", "tests.pipeline.fake_providers.FakePbx", base.PBX)


def fixture_text(provider: str, name: str) -> str:
    return (FIXTURES / provider / name).read_text(encoding="utf-8").strip()


def fixture_json(provider: str, name: str) -> Any:
    return json.loads(fixture_text(provider, name))


@dataclass
class CallScript:
    """One call as the PBX reports it: `event(seq, kind, ...)` happens `seq` seconds after `start`."""

    call_id: str
    direction: str = "in"
    client: str = "+79101234567"
    did: str = "+74951234567"
    start: dt.datetime = BASE_TIME

    def event(
        self, seq: int, kind: str, ext: str = "", *, outcome: str = "", recorded: bool | None = None
    ) -> NormalisedEvent:
        return NormalisedEvent(
            provider_call_id=self.call_id,
            kind=kind,  # type: ignore[arg-type]
            order_key=f"{seq:08d}",
            dedupe_key=f"{self.call_id}:{seq}:{kind}:{ext}",
            timestamp=self.start + dt.timedelta(seconds=seq),
            direction=self.direction,  # type: ignore[arg-type]
            client_phone=self.client,
            client_phone_raw=self.client.lstrip("+"),
            external_phone=self.did,
            extension=ext,
            outcome=outcome,
            recording_expected=recorded,
            raw={"seq": seq, "kind": kind, "ext": ext},
        )


def play(pbx: Any, *events: NormalisedEvent) -> Call:
    """Each event as its own webhook, in the order given; the call as it is afterwards."""
    for event in events:
        ingest(pbx, [event])
    return Call.objects.get(pbx_connection=pbx, provider_call_id=events[0].provider_call_id)


def deliver(crm: Any, passes: int = 30) -> None:
    """Relay passes over this CRM connection's jobs, run inline, until none is due (jobs of the same call go
    one at a time, in order). Other connections' jobs (the PBX's recording fetch) are left alone."""
    for _ in range(passes):
        now = timezone.now()
        outbox.expire_due_jobs(now)
        due = list(outbox.claimable(now).filter(crm_connection=crm).values_list("pk", flat=True))
        if not due:
            return
        for pk in due:
            owner = uuid.uuid4().hex
            if outbox.claim([pk], owner, now):
                outbox.run_claim(owner, [pk])


def store_recording(call: Call) -> Recording:
    """The recording the pipeline fetched: stored, then the "recording stored" change fans out to CRMs."""
    recording, _ = Recording.objects.get_or_create(call=call)
    changes: dict[str, Any] = {"state": Recording.STORED, "file": "x.mp3", "content_type": "audio/mpeg"}
    Recording.objects.filter(pk=recording.pk).update(stored_at=timezone.now(), **changes)
    recording.refresh_from_db()
    recording_stored(recording)
    return recording


WEBHOOK_SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, base64


def webhook_subscriber(tenant: Any, url: str, secret: str = WEBHOOK_SECRET, **settings: Any) -> Any:
    """A `webhook` provider connection (signed events to `url`) of `tenant`, key "hooks"."""
    from tests.factories import CrmConnectionFactory

    return CrmConnectionFactory(
        tenant=tenant,
        provider="webhook",
        key="hooks",
        settings=settings,
        secrets={"url": url, "signing_secret": secret},
    )
