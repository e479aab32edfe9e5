"""The inbox processor: applies the events webhooks stored (calls.inbox) to their calls, call by call, in order.

One call is applied by one processor at a time: on PostgreSQL under a transaction-scoped advisory lock on
(connection, provider call id), which another processor skips instead of waiting for; on SQLite every write
transaction is exclusive (`transaction_mode: IMMEDIATE`). Different calls go in parallel on PostgreSQL.

Applying is what the webhook used to do itself: create or lock the Call, recompute its state from ALL its
applied events plus the new ones (so repeats and out-of-order arrivals give the same final call), attach the
click-to-call request and the routing decision, expect the recording, write the adapter's own jobs and the
CRMs' jobs for the notices. The events are marked done in the same transaction.

A failure (an adapter raising) rolls back that call only. The event it happened on keeps the error and is tried
again after a backoff; the call's later events wait behind it. After INBOX_MAX_ATTEMPTS the event is marked
failed and skipped, so the rest proceed; the admin shows it and can queue it again (`requeue`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import Min, Q, QuerySet
from django.utils import timezone

from calls import services
from calls.events import NormalisedEvent
from calls.models import Call, CallEvent
from integrations.models import PbxConnection
from integrations.providers.base import get_provider
from portal import logs

logger = logging.getLogger("callbridge.inbox")

# Seconds before the 1st, 2nd, … retry of an event that failed to apply (scaled by OUTBOX_TIME_SCALE).
BACKOFF = (5, 15, 60, 300)
BATCH_CALLS = 50


def backoff(attempts: int) -> dt.timedelta:
    seconds = BACKOFF[min(attempts, len(BACKOFF)) - 1]
    return dt.timedelta(seconds=seconds * settings.OUTBOX_TIME_SCALE)


# ---------------------------------------------------------------------------------------------------------
# Synchronous ingest (worker-side callers: call_info, reconciliation, grace timers, the test suite)
# ---------------------------------------------------------------------------------------------------------


def ingest(pbx_connection: PbxConnection, events: Sequence[NormalisedEvent]) -> list[Call]:
    """Store the events and apply them now, in this process. For code that already runs in a worker (a job
    that learnt more about a call); webhooks only store (calls.inbox). Waits for a processor that holds the
    call; an event in backoff is applied too."""
    get_provider(pbx_connection).store_events(events)
    calls = []
    for provider_call_id in dict.fromkeys(e.provider_call_id for e in events):
        process_call(pbx_connection.pk, provider_call_id, wait=True, connection=pbx_connection)
        call = Call.objects.filter(pbx_connection=pbx_connection, provider_call_id=provider_call_id).first()
        if call is not None:
            calls.append(call)
    return calls


# ---------------------------------------------------------------------------------------------------------
# The queue
# ---------------------------------------------------------------------------------------------------------


def _due(now: dt.datetime) -> Q:
    return Q(status=CallEvent.PENDING) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))


def due_calls(limit: int = BATCH_CALLS, now: dt.datetime | None = None) -> list[tuple[int, str]]:
    """(connection id, provider call id) of calls with due events, the longest waiting first."""
    now = now or timezone.now()
    rows = (
        CallEvent.objects.filter(_due(now))
        .values("pbx_connection_id", "provider_call_id")
        .annotate(first=Min("id"))
        .order_by("first")[:limit]
    )
    return [(r["pbx_connection_id"], r["provider_call_id"]) for r in rows]


def process_pending(limit: int = BATCH_CALLS, now: dt.datetime | None = None) -> int:
    """One pass: apply the due events of up to `limit` calls. Returns how many calls were applied."""
    now = now or timezone.now()
    connections: dict[int, PbxConnection] = {}
    applied = 0
    for pbx_id, provider_call_id in due_calls(limit, now):
        if pbx_id not in connections:
            found = PbxConnection.objects.select_related("tenant").filter(pk=pbx_id).first()
            if found is None:
                continue
            connections[pbx_id] = found
        if process_call(pbx_id, provider_call_id, now=now, connection=connections[pbx_id]):
            applied += 1
    return applied


def drain(max_passes: int = 1000) -> int:
    """Apply everything due, pass after pass, until nothing is left (tests, management commands)."""
    total = 0
    for _ in range(max_passes):
        done = process_pending()
        if not done:
            break
        total += done
    return total


def oldest_pending_seconds(now: dt.datetime | None = None) -> float:
    """Age of the oldest stored event not applied yet (0 when none waits): one index lookup."""
    now = now or timezone.now()
    oldest = (
        CallEvent.objects.filter(status=CallEvent.PENDING)
        .order_by("received_at")
        .values_list("received_at", flat=True)
        .first()
    )
    return max(0.0, (now - oldest).total_seconds()) if oldest else 0.0


def requeue(events: QuerySet[CallEvent]) -> int:
    """Admin action: failed events go back to the queue, with fresh attempts, applied at the next pass."""
    return events.filter(status=CallEvent.FAILED).update(
        status=CallEvent.PENDING, attempts=0, next_attempt_at=None
    )


# ---------------------------------------------------------------------------------------------------------
# One call
# ---------------------------------------------------------------------------------------------------------


def _lock_key(pbx_id: int, provider_call_id: str) -> int:
    digest = hashlib.blake2b(f"{pbx_id}:{provider_call_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock(pbx_id: int, provider_call_id: str, wait: bool) -> bool:
    """Hold the call for this transaction. SQLite: the IMMEDIATE transaction already excludes every writer."""
    if db_connection.vendor != "postgresql":
        return True
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    with db_connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s)", [_lock_key(pbx_id, provider_call_id)])
        row = cursor.fetchone()
    return wait or bool(row[0])


def process_call(
    pbx_id: int,
    provider_call_id: str,
    *,
    wait: bool = False,
    now: dt.datetime | None = None,
    connection: PbxConnection | None = None,
) -> bool:
    """Apply a call's pending events. False when another processor holds the call, nothing is pending, or
    the call waits for a retry (`wait=True` waits for the lock and ignores the retry time)."""
    now = now or timezone.now()
    with transaction.atomic():
        if not _lock(pbx_id, provider_call_id, wait):
            return False
        rows = list(
            CallEvent.objects.filter(
                pbx_connection_id=pbx_id, provider_call_id=provider_call_id, status=CallEvent.PENDING
            ).order_by("id")
        )
        if not rows:
            return False
        retry_at = max(
            (r.next_attempt_at for r in rows if r.next_attempt_at and r.next_attempt_at > now), default=None
        )
        if retry_at is not None and not wait:
            # Events that arrived while an earlier one waits for its retry wait with it, in order.
            fresh = [r.pk for r in rows if r.next_attempt_at is None]
            CallEvent.objects.filter(pk__in=fresh).update(next_attempt_at=retry_at)
            return False
        if connection is None:
            connection = PbxConnection.objects.select_related("tenant").get(pk=pbx_id)
        return _apply_arrivals(connection, get_provider(connection), provider_call_id, rows, now)


def _arrivals(rows: Sequence[CallEvent]) -> list[list[CallEvent]]:
    """The rows grouped by the webhook that stored them (one store() gives its rows one received_at), in
    arrival order: each is applied as that webhook's request applied it before the inbox, so the notices (a
    pop-up, then the end) are those of a synchronous webhook whatever the processor's lag."""
    groups: list[list[CallEvent]] = []
    for row in rows:
        if groups and groups[-1][0].received_at == row.received_at:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _apply_arrivals(
    connection: PbxConnection,
    adapter: Any,
    provider_call_id: str,
    rows: Sequence[CallEvent],
    now: dt.datetime,
) -> bool:
    applied = False
    remaining = list(rows)
    for group in _arrivals(rows):
        try:
            with transaction.atomic():
                _apply(connection, adapter, provider_call_id, group, now)
            applied = True
            remaining = remaining[len(group) :]
            continue
        except Exception as exc:
            if len(group) == 1:
                if not _record_failure(group[0], remaining[1:], exc, now):
                    return applied  # the rest wait for this one's retry
                remaining = remaining[1:]
                continue
        # A webhook with several events failed: one at a time finds the one that fails.
        for row in sorted(group, key=lambda r: (r.order_key, r.pk)):
            rest = [r for r in remaining if r.pk != row.pk]
            try:
                with transaction.atomic():
                    _apply(connection, adapter, provider_call_id, [row], now)
                applied = True
            except Exception as exc:
                if not _record_failure(row, rest, exc, now):
                    return applied
            remaining = rest
    return applied


def _record_failure(row: CallEvent, later: Sequence[CallEvent], exc: Exception, now: dt.datetime) -> bool:
    """Keep the error on the event; retry later, or mark it failed after INBOX_MAX_ATTEMPTS. True = skipped."""
    attempts = row.attempts + 1
    message = f"{exc.__class__.__name__}: {exc}"[:2000]
    if attempts >= settings.INBOX_MAX_ATTEMPTS:
        CallEvent.objects.filter(pk=row.pk).update(
            status=CallEvent.FAILED, attempts=attempts, last_error=message, next_attempt_at=None
        )
        logger.error(
            "event %s (%s of call %s) failed %s times, skipped: %s",
            row.pk,
            row.kind,
            row.provider_call_id,
            attempts,
            message,
            exc_info=exc,
        )
        return True
    retry_at = now + backoff(attempts)
    CallEvent.objects.filter(pk=row.pk).update(
        attempts=attempts, last_error=message, next_attempt_at=retry_at
    )
    CallEvent.objects.filter(pk__in=[r.pk for r in later]).update(next_attempt_at=retry_at)
    logger.warning(
        "event %s (%s of call %s) not applied (attempt %s), retrying at %s: %s",
        row.pk,
        row.kind,
        row.provider_call_id,
        attempts,
        retry_at.isoformat(),
        message,
        exc_info=exc,
    )
    return False


def _lock_call(pbx_connection: PbxConnection, provider_call_id: str) -> tuple[Call, bool]:
    # The advisory lock (or SQLite's exclusive transaction) already keeps other processors out; FOR UPDATE
    # also keeps out the other writers of a call (admin actions, click-to-call attachment).
    call = (
        Call.objects.select_for_update()
        .filter(pbx_connection=pbx_connection, provider_call_id=provider_call_id)
        .first()
    )
    created = call is None
    if call is None:
        call = Call.objects.create(
            tenant_id=pbx_connection.tenant_id,
            pbx_connection=pbx_connection,
            provider_call_id=provider_call_id,
        )
    call.pbx_connection = pbx_connection
    logs.bind(call=call.pk)
    return call, created


SETTLED_FIELDS = ["order_key", "occurred_at", "kind", "normalised"]


def _settled(adapter: Any, row: CallEvent) -> tuple[NormalisedEvent, bool]:
    """The row's event, finished by the adapter when the webhook left `settle` hints; then the row's
    SETTLED_FIELDS are set to match (not saved: _apply writes them with the row's new status). True when so."""
    event = NormalisedEvent.from_record(row.normalised, row.raw)
    if not event.settle:
        return event, False
    event = replace(adapter.settle_event(event, row.received_at), settle={})
    row.order_key, row.occurred_at, row.kind = event.order_key, event.timestamp, event.kind
    row.normalised = event.as_record()
    return event, True


def _apply(
    pbx_connection: PbxConnection,
    adapter: Any,
    provider_call_id: str,
    rows: Sequence[CallEvent],
    now: dt.datetime,
) -> Call:
    settled = [(row, *_settled(adapter, row)) for row in rows]
    new = sorted((event for _row, event, _changed in settled), key=lambda e: e.order_key)
    call, created = _lock_call(pbx_connection, provider_call_id)
    applied = [] if created else services.stored_events(call)
    all_events = sorted([*applied, *new], key=lambda e: e.order_key)
    # Marked done in one statement for the rows as stored, one for the rows settle_event() changed.
    done = {
        "call": call,
        "status": CallEvent.DONE,
        "processed_at": now,
        "next_attempt_at": None,
        "last_error": "",
    }
    changed = [row for row, _event, was_changed in settled if was_changed]
    unchanged = [row.pk for row, _event, was_changed in settled if not was_changed]
    if unchanged:
        CallEvent.objects.filter(pk__in=unchanged).update(**done)
    if changed:
        for row in changed:
            for field, value in done.items():
                setattr(row, field, value)
        CallEvent.objects.bulk_update(changed, [*SETTLED_FIELDS, *done])
    services.apply_events(call, created, new, all_events, adapter)
    return call
