"""Mango Office VPBX, main API (server-to-server webhooks and commands).

Wire facts (shared/protocols/pbx.md §2): every request, both ways, is a form POST with `vpbx_api_key`, `json` and
`sign` = lower-case hex sha256(vpbx_api_key + json + vpbx_api_salt). The PBX appends fixed suffixes to the base
URL the admin pasted: `events/call` (one notification per leg state, ordered per leg by `seq`),
`events/summary` (the call's final word), `events/recording`, `events/record/added`, `events/dtmf`,
`result/<command>` (async results of our commands) and a "check connection" `ping`. We send `commands/callback`
(click-to-call), `commands/route` (CRM-driven routing of a call waiting in the IVR), `queries/recording/post`
(a temporary recording link), `config/users/request` (directory) and `stats/request` + `stats/result`
(reconciliation). Decisions on the digest's open questions are in docs/providers/mango.md.

Call model: `entry_id` is the Call, `call_id` one leg (IVR, queue, each employee rung, each transfer). Every
event is stored; the pipeline recomputes the call from all of them, so the kinds given here decide the sets of
extensions that rang and answered. A call is final for CRMs at its summary plus the recording outcome
(`events/recording` Completed, `record/added`, or nothing within `recording_grace_seconds`).

The package, by concern: wire.py (signature, codes, value parsing), webhooks.py (what Mango sends us),
api.py (what we send Mango), reconcile.py (statistics), simulate.py (simulated calls for `simulate_call`);
this module holds the adapter's configuration, time stamps and its answers to the pipeline.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from django.core.cache import cache
from django.utils import timezone

from integrations.phones import to_e164_or_none
from integrations.providers.base import CheckResult, Field, JobKind, JobSpec, PbxProvider, SchemaError
from integrations.providers.mango.api import MangoApi
from integrations.providers.mango.reconcile import MangoReconciliation
from integrations.providers.mango.simulate import MangoSimulation
from integrations.providers.mango.webhooks import MangoWebhooks
from integrations.providers.mango.wire import (
    MOSCOW_SHIFT,
    OFFSET_MEMORY_SECONDS,
    OFFSET_TOLERANCE,
    ROUTE_PREFIX,
    _int,
    _order_key,
    _text,
)

if TYPE_CHECKING:
    from calls.events import NormalisedEvent
    from calls.models import Call, OutboundJob

logger = logging.getLogger("callbridge.mango")


class MangoProvider(MangoWebhooks, MangoApi, MangoReconciliation, MangoSimulation, PbxProvider):
    key = "mango"
    settings_fields = (
        Field("api_url", "url", default="https://app.mango-office.ru/vpbx/"),
        Field("crm_routing", "bool", default=True),
        Field("reconcile_hours", "int", default=24, minimum=0, maximum=24 * 14),
        Field("timestamp_offset", "str", default="auto"),
        Field("recording_grace_seconds", "int", default=60, minimum=0, maximum=3600),
    )
    secret_fields = (Field("api_key", "secret"), Field("api_salt", "secret"))
    inbound_paths = (
        "events/call",
        "events/summary",
        "events/recording",
        "events/record/added",
        "events/dtmf",
        "ping",
    )
    auth_failure_status = 403
    job_kinds = {
        # Useful only while the caller waits in the IVR: dies with the call, or after half a minute.
        "mango.route": JobKind(
            window=dt.timedelta(seconds=30),
            ttl=dt.timedelta(seconds=30),
            expires_on_call_end=True,
            ordered=False,
        ),
        "mango.recording_grace": JobKind(window=dt.timedelta(hours=6), ordered=False),
        "mango.reconcile": JobKind(window=dt.timedelta(hours=1), ordered=False),
    }

    @classmethod
    def clean_settings(cls, data: dict[str, Any] | None) -> dict[str, Any]:
        data = dict(data or {})
        offset = data.get("timestamp_offset")
        if isinstance(offset, int) and not isinstance(offset, bool):
            data["timestamp_offset"] = str(offset)
        cleaned = super().clean_settings(data)
        offset = cleaned.get("timestamp_offset", "auto")
        if offset != "auto" and _int(offset) is None:
            raise SchemaError(
                "settings.timestamp_offset", f"must be 'auto' or a whole number of seconds, got {offset!r}"
            )
        if offset != "auto":
            cleaned["timestamp_offset"] = str(_int(offset))
        return cleaned

    @property
    def region(self) -> str:
        tenant = getattr(self.connection, "tenant", None)
        return getattr(tenant, "region", "") or "RU"

    def _offset(self, reference: int | None = None, received_at: dt.datetime | None = None) -> int:
        """Seconds to add to Mango's epoch values to get true UTC (open question 13).

        A number in `timestamp_offset` is used as is. `auto` compares a real-time event's time stamp with the
        receipt time: about 0 means UTC, about +3 h means the values are Moscow wall time written as epoch
        ("UTC+3", as the current documentation labels them), so 3 h are subtracted. A confident answer is
        remembered per connection (in the cache) for payloads that cannot tell (statistics, late events).
        Webhooks never call this with `auto` (no cache in their request): their events carry the time stamp
        in `settle` and settle_event() shifts them when the inbox processor applies them."""
        setting = self._fixed_offset()
        if setting is not None:
            return setting
        memory_key = f"mango:timestamp-offset:{self.connection.pk}"
        if reference:
            received = int(received_at.timestamp()) if received_at else int(time.time())
            gap = reference - received
            for offset in (0, -MOSCOW_SHIFT, MOSCOW_SHIFT):
                if abs(gap + offset) <= OFFSET_TOLERANCE:
                    if cache.get(memory_key) != offset:
                        cache.set(memory_key, offset, OFFSET_MEMORY_SECONDS)
                        if offset:
                            logger.info("mango %s: time stamps are shifted by %s s", self.connection, -offset)
                    return offset
        remembered = cache.get(memory_key)
        return int(remembered) if remembered is not None else 0

    def _fixed_offset(self) -> int | None:
        """The configured offset in seconds; None when `auto` (detected from the events)."""
        setting = str(self.settings.get("timestamp_offset") or "auto")
        return None if setting == "auto" else (_int(setting, 0) or 0)

    def settle_event(self, event: NormalisedEvent, received_at: dt.datetime) -> NormalisedEvent:
        """Finish a webhook's event: keep a summary's answerer only if it is a known employee (to.extension may
        name a group), and shift the event by the detected clock offset: its time stamp and the second its
        order key starts with (every Mango order key does: wire._order_key)."""
        answerer = event.settle.get("answerer")
        if answerer:
            from integrations.models import Extension

            known = Extension.objects.filter(
                tenant_id=self.connection.tenant_id, number=answerer, kind=Extension.USER
            ).exists()
            if not known:
                event = replace(event, extension="", extensions=())
        if "clock" not in event.settle:
            return event
        offset = self._offset(event.settle.get("clock") or None, received_at)
        if not offset:
            return event
        epoch, _, rest = event.order_key.partition(".")
        return replace(
            event,
            timestamp=event.timestamp + dt.timedelta(seconds=offset),
            order_key=f"{max(int(epoch) + offset, 0):011d}.{rest}",
        )

    @staticmethod
    def _when(epoch: int | None, offset: int) -> dt.datetime:
        if not epoch:
            return timezone.now()
        return dt.datetime.fromtimestamp(epoch + offset, tz=dt.UTC)

    def _phone(self, value: Any) -> str:
        return to_e164_or_none(_text(value), self.region) or ""

    def check_connection(self) -> CheckResult:
        """config/users/request: a signed read of the employees; changes nothing."""
        return self.check_by_directory("config/users/request")

    def is_final(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        """Final at the summary once the recording outcome is known: a call nobody talked in has none; an
        answered one waits for events/recording Completed, record/added, or the grace timer's verdict."""
        if not any(e.kind == "completed" for e in events):
            return False
        if call.result != "answered":
            return True
        return any(e.recording_expected is not None for e in events)

    def recording_expected(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        # Any event that saw a stored recording wins: the grace timer only stops waiting, it proves nothing.
        return any(e.recording_expected for e in events)

    def jobs_after_ingest(self, call: Call, new_events: Sequence[NormalisedEvent]) -> list[JobSpec]:

        specs: list[JobSpec] = []
        if self.settings.get("crm_routing") and not call.ended:
            ivr = next(
                (
                    e
                    for e in new_events
                    if e.kind == "ringing" and e.location == "ivr" and e.direction == "in" and e.leg_id
                ),
                None,
            )
            if ivr is not None:
                specs.append(
                    JobSpec(
                        "mango.route",
                        f"route:{call.provider_call_id}",
                        {
                            "leg_id": ivr.leg_id,
                            "caller": ivr.client_phone,
                            "did": ivr.external_phone,
                            "command_id": f"{ROUTE_PREFIX}{uuid.uuid4().hex}",
                        },
                        call=call,
                        order_key=ivr.order_key,
                    )
                )
        if call.ended and not call.final_for_crm and any(e.kind == "completed" for e in new_events):
            grace = int(self.settings.get("recording_grace_seconds") or 0)
            specs.append(
                JobSpec(
                    "mango.recording_grace",
                    f"grace:{call.provider_call_id}",
                    {"grace_seconds": grace},
                    call=call,
                    due_at=timezone.now() + dt.timedelta(seconds=grace),
                )
            )
        return specs

    def perform(self, job: OutboundJob) -> str:
        performers: dict[str, Callable[[OutboundJob], str]] = {
            "mango.route": self._perform_route,
            "mango.recording_grace": self._perform_grace,
            "mango.reconcile": self._perform_reconcile,
        }
        if job.kind not in performers:
            return super().perform(job)
        return performers[job.kind](job)

    def _perform_grace(self, job: OutboundJob) -> str:
        """No recording outcome within the grace period: say so with a recording_ready event, which makes the
        call final (is_final needs a recording verdict) without claiming a recording exists."""
        from calls import outbox

        call = job.call
        if call is None:
            return "skipped: no call"
        call.refresh_from_db()
        if call.final_for_crm:
            return "already final"
        now = timezone.now()
        with outbox.on_behalf_of(job):
            self._ingest_grace(job, call, now)
        return "no recording outcome within the grace period: final"

    def _ingest_grace(self, job: OutboundJob, call: Call, now: dt.datetime) -> None:
        from calls.events import NormalisedEvent
        from calls.processor import ingest

        ingest(
            self.connection,
            [
                NormalisedEvent(
                    provider_call_id=call.provider_call_id,
                    kind="recording_ready",
                    order_key=_order_key(int(now.timestamp()), 999999, "grace"),
                    dedupe_key=f"grace:{call.provider_call_id}",
                    timestamp=now,
                    recording_expected=False,
                    raw={"grace_seconds": job.payload.get("grace_seconds")},
                )
            ],
        )
