"""Reconciliation from Mango's statistics: every `reconcile_hours` a `stats/request` + `stats/result` export,
and calls no webhook completed are ingested from its rows, so an outage of the portal loses no calls.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from typing import TYPE_CHECKING

from django.conf import settings as django_settings
from django.core.cache import cache
from django.utils import timezone

from integrations.providers.base import JobSpec, ProviderError, ReconcileResult
from integrations.providers.mango.wire import (
    RATE_WINDOW_SECONDS,
    _int,
    _order_key,
    _text,
    _unanswered_outcome,
)

if TYPE_CHECKING:
    from calls.events import NormalisedEvent
    from calls.models import Call, OutboundJob


# Reconciliation: leave the last minutes to the webhooks still in flight; poll the export a few times.
RECONCILE_SETTLE = dt.timedelta(minutes=5)
MANGO_KEEPS_DAYS = 14  # how far back Mango's statistics go
STATS_POLL_WAITS = (5.0, 5.0)
STATS_KEY_SECONDS = 600
STATS_FIELDS = (
    "entry_id",
    "create",
    "start",
    "finish",
    "answer",
    "from_extension",
    "from_number",
    "to_extension",
    "to_number",
    "disconnect_reason",
    "line_number",
    "location",
    "records",
)


class MangoReconciliation:
    """The periodic reconciliation job of MangoProvider."""

    def periodic_jobs(self, now: dt.datetime) -> list[JobSpec]:
        """Every hour: the statistics since the last successful run (at least `reconcile_hours`, at most the
        14 days Mango keeps), so a portal that was down for days catches up on every call it missed."""
        hours = int(self.settings.get("reconcile_hours") or 0)
        if hours <= 0:
            return []
        bucket = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
        until = int((bucket - RECONCILE_SETTLE).timestamp())
        since = until - hours * 3600
        last = self._last_reconciled_until()
        if last is not None:
            since = min(since, last)
        since = max(since, until - MANGO_KEEPS_DAYS * 86400)
        return [
            JobSpec("mango.reconcile", f"reconcile:{bucket:%Y%m%d%H}", {"date_from": since, "date_to": until})
        ]

    def _last_reconciled_until(self) -> int | None:
        """`date_to` of this connection's last reconciliation that succeeded; None before the first one."""
        from calls import outbox
        from calls.models import OutboundJob

        payload = (
            OutboundJob.objects.filter(
                connection_ref=outbox.connection_ref(self.connection),
                kind="mango.reconcile",
                status=OutboundJob.SENT,
            )
            .order_by("-payload__date_to", "-id")
            .values_list("payload", flat=True)
            .first()
        )
        value = _int((payload or {}).get("date_to")) if isinstance(payload, dict) else None
        return value or None

    def reconcile(self, call: Call) -> ReconcileResult:
        """A call with no summary: looked up in the statistics from an hour before it began until now. Rows
        with a finish time complete it; rows without one mean it is still going on; no row means Mango does
        not know it (or not yet: a real summary arriving later still corrects the call)."""
        now = int(timezone.now().timestamp())
        began = int(call.started_at.timestamp()) if call.started_at else now - MANGO_KEEPS_DAYS * 86400
        began = max(began - 3600, now - MANGO_KEEPS_DAYS * 86400)
        text = self._statistics_between(began, now, f"call-{call.pk}")
        rows = _group_rows(text).get(call.provider_call_id)
        if not rows:
            return ReconcileResult(
                "unknown",
                note="closed as unknown: Mango's statistics have no such call and no summary arrived",
            )
        events = self._events_from_statistics(call.provider_call_id, rows, self._offset(None))
        if not events:
            return ReconcileResult("live", note="Mango's statistics show the call still in progress")
        note = "completed by reconciliation from Mango statistics: no summary webhook arrived"
        return ReconcileResult("completed", tuple(events), note=note)

    def _perform_reconcile(self, job: OutboundJob) -> str:
        """Basic statistics for the last `reconcile_hours` (stats/request, then stats/result polled); calls no
        webhook completed are ingested from them, so an outage of the portal loses no calls."""
        from calls import outbox
        from calls.models import Call
        from calls.processor import ingest

        calls = _group_rows(self._statistics(job))
        offset = self._offset(None)
        completed = set(
            Call.objects.filter(
                pbx_connection=self.connection, provider_call_id__in=list(calls), ended=True
            ).values_list("provider_call_id", flat=True)
        )
        ingested = 0
        for entry_id, rows in calls.items():
            if entry_id in completed:
                continue
            events = self._events_from_statistics(entry_id, rows, offset)
            if events:
                with outbox.on_behalf_of(job):
                    ingest(self.connection, events)
                ingested += 1
        return f"{len(calls)} calls in the statistics, {ingested} completed from them"

    def _statistics(self, job: OutboundJob) -> str:
        return self._statistics_between(
            int(job.payload["date_from"]), int(job.payload["date_to"]), str(job.pk)
        )

    def _statistics_between(self, date_from: int, date_to: int, tag: str) -> str:
        """The CSV export. Its key survives a retry (the data stays at least a minute after it is ready)."""
        memory = f"mango:stats-key:{tag}"
        key = cache.get(memory)
        if key:
            waits: tuple[float, ...] = (0.0, *STATS_POLL_WAITS[1:])
        else:
            if not cache.add(f"mango:stats-slot:{self.connection.tenant_id}", 1, RATE_WINDOW_SECONDS):
                raise ProviderError(
                    "stats/request: one statistics request per 2 s", retry_after=RATE_WINDOW_SECONDS
                )
            shift = self._offset(None)
            payload = {
                "date_from": date_from - shift,
                "date_to": date_to - shift,
                "fields": ",".join(STATS_FIELDS),
                "request_id": f"reconcile-{tag}",
            }
            key = _text(self._command("stats/request", payload).get("key"))
            if not key:
                raise ProviderError("stats/request: Mango answered without a key", retry_after=30.0)
            cache.set(memory, key, STATS_KEY_SECONDS)
            waits = STATS_POLL_WAITS
        for wait in waits:
            # Short, bounded waits (≤ 10 s in all, at most one poll per 5 s as Mango asks); longer is the outbox's job.
            if wait:
                time.sleep(wait * django_settings.OUTBOX_TIME_SCALE)
            try:
                response = self._post("stats/result", {"key": key})
            except ProviderError as exc:
                if exc.status == 404:
                    cache.delete(memory)
                    raise ProviderError(
                        "stats/result: the export expired; asking again", retry_after=10.0
                    ) from None
                raise
            if response.status_code == 200:
                cache.delete(memory)
                return response.content.decode("utf-8", errors="replace")
        raise ProviderError("stats/result: the export is not ready yet", retry_after=10.0)

    def _events_from_statistics(
        self, entry_id: str, rows: list[dict[str, str]], offset: int
    ) -> list[NormalisedEvent]:
        """ringing, answered and completed events for one call from its statistics rows (one row per leg).
        Dedupe keys start with "stats:", which no webhook key does."""
        from calls.events import NormalisedEvent

        finished = [_int(r.get("finish"), 0) or 0 for r in rows]
        if not any(finished):
            return []  # still in progress: the webhooks or the next run will tell
        starts = [_int(r.get("create") or r.get("start"), 0) or 0 for r in rows]
        started = min((s for s in starts if s), default=max(finished))
        ended = max(finished)
        if all(r.get("from_extension") for r in rows):
            direction = "internal" if all(r.get("to_extension") for r in rows) else "out"
        else:
            direction = "in"
        answered_rows = sorted(
            (
                r
                for r in rows
                if (_int(r.get("answer"), 0) or 0) > 0 and r.get("location") not in ("ivr", "queue")
            ),
            key=lambda r: _int(r.get("answer"), 0) or 0,
        )
        if direction == "in":
            client_raw = next((r.get("from_number", "") for r in rows if not r.get("from_extension")), "")
        elif direction == "out":
            client_raw = next((r.get("to_number", "") for r in rows if not r.get("to_extension")), "")
        else:
            client_raw = ""
        records = [rec for r in rows for rec in _records(r.get("records", ""))]
        common = {
            "provider_call_id": entry_id,
            "direction": direction,
            "client_phone_raw": client_raw,
            "client_phone": self._phone(client_raw),
            "external_phone": next((self._phone(r["line_number"]) for r in rows if r.get("line_number")), ""),
        }
        initiator = rows[0].get("from_extension", "") if direction == "out" else ""
        start_when = self._when(started, offset)
        events = [
            NormalisedEvent(
                kind="ringing",
                order_key=_order_key(int(start_when.timestamp()), 0, "stats"),
                dedupe_key=f"stats:{entry_id}:start",
                timestamp=start_when,
                extension=initiator,
                raw={"derived_from": "stats"},
                **common,
            )
        ]
        if direction == "in":
            # Every employee leg rang: gives the call its rang extensions (and their cards a cancel).
            for index, row in enumerate(rows):
                who = row.get("to_extension", "")
                if not who or row.get("location") in ("ivr", "queue"):
                    continue
                when = self._when(_int(row.get("start")) or started, offset)
                events.append(
                    NormalisedEvent(
                        kind="ringing",
                        order_key=_order_key(int(when.timestamp()), 1, f"stats{index:03d}"),
                        dedupe_key=f"stats:{entry_id}:ring:{index}",
                        timestamp=when,
                        location="agent",
                        extension=who,
                        extensions=(who,),
                        raw={"derived_from": "stats"},
                        **common,
                    )
                )
        for index, row in enumerate(answered_rows):
            who = row.get("from_extension", "") if direction == "out" else row.get("to_extension", "")
            when = self._when(_int(row.get("answer")), offset)
            events.append(
                NormalisedEvent(
                    kind="answered",
                    order_key=_order_key(int(when.timestamp()), 999998, f"stats{index:03d}"),
                    dedupe_key=f"stats:{entry_id}:answer:{index}",
                    timestamp=when,
                    location="agent",
                    extension=who,
                    extensions=(who,) if who else (),
                    raw={"derived_from": "stats", **row},
                    **common,
                )
            )
        answered = bool(answered_rows)
        first_answer = _int(answered_rows[0].get("answer"), 0) if answered else 0
        reason = _int(rows[-1].get("disconnect_reason"))
        end_when = self._when(ended, offset)
        events.append(
            NormalisedEvent(
                kind="completed",
                order_key=_order_key(int(end_when.timestamp()), 999999, "stats"),
                dedupe_key=f"stats:{entry_id}:end",
                timestamp=end_when,
                outcome="answered" if answered else _unanswered_outcome(direction, reason),
                talk_seconds=max(0, ended - (first_answer or ended)) if answered else 0,
                duration_seconds=max(0, ended - started),
                disconnect_reason=_text(rows[-1].get("disconnect_reason")),
                recording_expected=bool(records) and answered,
                recording={"recording_id": records[0]} if records and answered else {},
                raw={"_note": "completed from Mango statistics: no summary webhook arrived", "rows": rows},
                **common,
            )
        )
        return events


def _records(value: str) -> list[str]:
    """The `records` column looks like "[rec1,rec2]" (or empty)."""
    inner = (value or "").strip().strip("[]")
    return [part.strip() for part in inner.split(",") if part.strip()]


def _group_rows(text: str) -> dict[str, list[dict[str, str]]]:
    """The CSV export (';' separated, no quoting, columns in the order we asked), rows grouped by entry_id."""
    calls: dict[str, list[dict[str, str]]] = {}
    reader = csv.reader(io.StringIO(text), delimiter=";", quoting=csv.QUOTE_NONE)
    for cells in reader:
        if not cells or not any(c.strip() for c in cells):
            continue
        if cells[0].strip() == STATS_FIELDS[0]:
            continue  # a header row, should Mango add one
        row = {name: (cells[i].strip() if i < len(cells) else "") for i, name in enumerate(STATS_FIELDS)}
        if row["entry_id"]:
            calls.setdefault(row["entry_id"], []).append(row)
    return calls
