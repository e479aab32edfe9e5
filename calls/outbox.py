"""The outbox: durable outbound work in the database, sent by Celery tasks that a relay dispatches.

Why this shape (RELIABILITY.md §0, §1.2–1.4): a webhook writes its jobs in the same transaction as the change
that caused them and never talks to the broker, so a stopped or frozen Redis cannot fail or stall it. The relay
(beat, every 1.5 s) claims due jobs with an atomic conditional UPDATE that sets a lease and publishes one task
per job or batch; it never sends HTTP itself, so one hung CRM cannot stall other tenants. A lost message, a
killed worker or a Redis restart without data only lets the lease expire: the job is claimed again. Retries are
scheduled in the database (`next_attempt_at`), never as long Celery countdowns.

Fencing (docs/reliability.md): the outbound work of a claim has a total deadline (`timing`), the task's soft
and hard limits come after it, and the lease after them, so a worker is stopped before its jobs can be claimed
again. Should a worker outlive its lease anyway (frozen, or a clock jump), every write it makes on behalf of the
claim checks that the job still carries its `lease_owner` and an unexpired lease: a late result is recorded in
the ledger as `fenced` and changes nothing on the job.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone
from django.utils.module_loading import import_string

from calls.models import Call, JobAttempt, OutboundJob
from integrations import http
from integrations.models import CrmConnection, PbxConnection
from integrations.providers.base import REGISTRY, JobKind, JobSpec, get_provider, provider_class

logger = logging.getLogger("callbridge.outbox")

# Retry spacing after the 1st, 2nd, … failure (seconds); then every 5 minutes with bounded jitter.
SCHEDULE = (10, 30, 60, 120, 300)
STEADY_DELAY = 300
JITTER = 0.2
MAX_RETRY_AFTER = 3600
CLAIM_LIMIT = 200
PASS_LIMIT = CLAIM_LIMIT * 25  # the most due jobs one relay pass fetches
HELD_GRACE = dt.timedelta(minutes=5)
RECORDING_FETCH = "recording.fetch"

# Jobs the pipeline itself performs (not a provider): kind → (JobKind, handler dotted path).
PIPELINE_KINDS: dict[str, tuple[JobKind, str]] = {
    "recording.fetch": (
        JobKind(window=dt.timedelta(hours=6), ordered=False),
        "calls.recordings.fetch_recording",
    ),
    # A silent call asked about at its PBX (calls/reconcile.py); a failed round is followed by the next one.
    "call.reconcile": (
        JobKind(window=dt.timedelta(hours=1), ordered=False),
        "calls.reconcile.reconcile_call",
    ),
}
# What the pipeline does when one of its own jobs gives up (dead or failed): kind → handler(job, reason).
PIPELINE_GIVE_UP: dict[str, str] = {
    "recording.fetch": "calls.recordings.recording_unavailable",
    "call.reconcile": "calls.reconcile.close_as_unknown",
}


@dataclass(frozen=True)
class Timing:
    """Seconds, for one kind of job: the total deadline of its outbound work, then the task's soft and hard
    limits, then the lease, each strictly longer than the one before."""

    deadline: float
    soft_limit: float
    hard_limit: float
    lease: float


def timing(kind: str) -> Timing:
    """A recording download gets a longer deadline: the largest file allowed at the slowest throughput
    accepted (RECORDING_MAX_BYTES / RECORDING_MIN_BYTES_PER_SECOND) on top of the usual one."""
    deadline = float(settings.OUTBOUND_DEADLINE_SECONDS)
    if kind == RECORDING_FETCH:
        deadline += settings.RECORDING_MAX_BYTES / settings.RECORDING_MIN_BYTES_PER_SECOND
    margin = float(settings.OUTBOX_LEASE_MARGIN_SECONDS)
    return Timing(deadline, deadline + margin, deadline + 2 * margin, deadline + 3 * margin)


def scaled(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds * settings.OUTBOX_TIME_SCALE)


def job_kind(connection: Any, kind: str) -> JobKind:
    if kind in PIPELINE_KINDS:
        window = PIPELINE_KINDS[kind][0]
        if kind == "recording.fetch":
            return JobKind(window=dt.timedelta(hours=settings.RECORDING_FETCH_HOURS), ordered=False)
        return window
    kinds = provider_class(connection.provider).job_kinds
    if kind not in kinds:
        raise KeyError(f"{connection.provider} declares no job kind {kind!r}")
    return kinds[kind]


def connection_ref(connection: Any) -> str:
    return f"{connection.SIDE}:{connection.pk}"


def _job_rows(
    connection: Any, specs: Iterable[JobSpec], call: Call | None, now: dt.datetime
) -> list[OutboundJob]:
    ref = connection_ref(connection)
    rows = []
    for spec in specs:
        kind = job_kind(connection, spec.kind)
        due = spec.due_at or now
        rows.append(
            OutboundJob(
                tenant_id=connection.tenant_id,
                pbx_connection=connection if connection.SIDE == "pbx" else None,
                crm_connection=connection if connection.SIDE == "crm" else None,
                connection_ref=ref,
                kind=spec.kind,
                call=spec.call or call,
                order_key=spec.order_key,
                dedupe_key=spec.dedupe_key[:300],
                payload=spec.payload,
                due_at=due,
                next_attempt_at=due,
                window_ends_at=due + kind.window,
                expires_at=spec.expires_at or (due + kind.ttl if kind.ttl is not None else None),
                expires_on_call_end=kind.expires_on_call_end,
                ordered=kind.ordered,
                created_at=now,
            )
        )
    return rows


def _write(rows: list[OutboundJob]) -> int:
    """Insert the rows whose (connection, dedupe key) is new: one lookup, one bulk INSERT."""
    if not rows:
        return 0
    taken = Q()
    by_ref: dict[str, list[str]] = {}
    for row in rows:
        by_ref.setdefault(row.connection_ref, []).append(row.dedupe_key)
    for ref, keys in by_ref.items():
        taken |= Q(connection_ref=ref, dedupe_key__in=keys)
    existing = set(OutboundJob.objects.filter(taken).values_list("connection_ref", "dedupe_key"))
    fresh, seen = [], set(existing)
    for row in rows:
        key = (row.connection_ref, row.dedupe_key)
        if key not in seen:
            seen.add(key)
            fresh.append(row)
    OutboundJob.objects.bulk_create(fresh, ignore_conflicts=True)
    return len(fresh)


def create_jobs(connection: Any, specs: Iterable[JobSpec], call: Call | None = None) -> int:
    """Write jobs for one connection (inside the caller's transaction). A dedupe key already used by this
    connection is skipped, so recomputing the same change creates nothing twice. Returns how many were new."""
    return _write(_job_rows(connection, specs, call, timezone.now()))


class JobBatch:
    """Jobs of several connections collected while one change is applied, written with one lookup and one
    INSERT (`write()`), with create_jobs()'s dedupe rules."""

    def __init__(self) -> None:
        self.rows: list[OutboundJob] = []
        self.now = timezone.now()

    def add(self, connection: Any, specs: Iterable[JobSpec], call: Call | None = None) -> None:
        self.rows += _job_rows(connection, specs, call, self.now)

    def write(self) -> int:
        written = _write(self.rows)
        self.rows = []
        return written


# ---------------------------------------------------------------------------------------------------------
# Relay: expire, claim, dispatch
# ---------------------------------------------------------------------------------------------------------


def expire_due_jobs(now: dt.datetime | None = None) -> int:
    """Live pop-ups that are too late, or whose call has ended, are expired rather than delivered late."""
    now = now or timezone.now()
    late = OutboundJob.objects.filter(status=OutboundJob.PENDING, expires_at__lt=now)
    ended = OutboundJob.objects.filter(status=OutboundJob.PENDING, expires_on_call_end=True, call__ended=True)
    count = 0
    for qs, why in (
        (late, "expired: not sent within its time to live"),
        (ended, "expired: the call has ended"),
    ):
        count += qs.filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)).update(
            status=OutboundJob.EXPIRED, last_error=why, lease_owner="", lease_expires_at=None
        )
    # A CRM job held while its connection was inactive goes out on reactivation only inside its retry window
    # (with a grace, so a relay that is a little late never costs a job its last attempt). PBX-side jobs keep
    # their last attempt: their give-up handlers (call_info, recordings) act on it.
    count += (
        OutboundJob.objects.filter(
            status=OutboundJob.PENDING, crm_connection__isnull=False, window_ends_at__lt=now - HELD_GRACE
        )
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .exclude(paused())
        .update(
            status=OutboundJob.DEAD,
            last_error="dead: its retry window ended before it could be sent (connection inactive?)",
            lease_owner="",
            lease_expires_at=None,
        )
    )
    return count


def paused() -> Q:
    """Jobs of an inactive connection: held (pending, not sent) until it is active again."""
    return Q(crm_connection__active=False) | Q(pbx_connection__active=False)


@functools.cache
def largest_batch() -> int:
    """The most jobs any provider's kind claims together (RetailCRM uploads): how many candidates a pass needs
    per free claim."""
    return max(
        (kind.batch_size for key in REGISTRY for kind in provider_class(key).job_kinds.values()), default=1
    )


def claimable(now: dt.datetime) -> QuerySet[OutboundJob]:
    """Due, pending, not leased, not held by an inactive connection, and (for ordered kinds) no earlier open job
    of the same call and connection."""
    earlier_open = OutboundJob.objects.filter(
        status=OutboundJob.PENDING,
        call_id=OuterRef("call_id"),
        connection_ref=OuterRef("connection_ref"),
        order_key__lt=OuterRef("order_key"),
        ordered=True,
    )
    return (
        OutboundJob.objects.filter(_lease_filter(now), next_attempt_at__lte=now)
        .exclude(paused())
        .filter(Q(ordered=False) | Q(call__isnull=True) | ~Exists(earlier_open))
        .order_by("next_attempt_at", "id")
    )


def _lease_filter(now: dt.datetime) -> Q:
    return Q(status=OutboundJob.PENDING) & (Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))


def claim(ids: Sequence[int], owner: str, now: dt.datetime, lease_seconds: float | None = None) -> list[int]:
    """Atomically lease the given jobs (for their kind's lease unless `lease_seconds` is given); returns the
    ids this owner got (others lost a race).

    Hand-written so that the rows are found by primary key: with the ORM's `status = 'pending'` the planner may
    pick the status index and, with statistics not yet updated after a burst (a backlog), visit every pending
    job for each claim (measured: 23 ms per claim of 50 with 30,000 pending). `status || ''` keeps the check
    without offering that index."""
    ids = list(dict.fromkeys(ids))
    if lease_seconds is None:
        kinds = set(OutboundJob.objects.filter(pk__in=ids).values_list("kind", flat=True))
        lease_seconds = max((timing(kind).lease for kind in kinds), default=timing("").lease)
    lease_until = now + dt.timedelta(seconds=lease_seconds)
    ops = db_connection.ops
    sql = (
        f"UPDATE {OutboundJob._meta.db_table} SET lease_owner = %s, lease_expires_at = %s "  # noqa: S608 - our table name; values are parameters
        f"WHERE id IN ({', '.join(['%s'] * len(ids))}) AND (status || '') = %s "
        "AND (lease_expires_at IS NULL OR lease_expires_at < %s)"
    )
    params = [owner, ops.adapt_datetimefield_value(lease_until), *ids, OutboundJob.PENDING]
    params.append(ops.adapt_datetimefield_value(now))
    with db_connection.cursor() as cursor:
        cursor.execute(sql, params)
        updated = cursor.rowcount
    if updated == len(ids):  # all of them: no need to ask which
        return ids
    return list(OutboundJob.objects.filter(pk__in=ids, lease_owner=owner).values_list("pk", flat=True))


@dataclass
class Claimed:
    owner: str
    job_ids: list[int]


def in_flight(now: dt.datetime) -> int:
    """Claims published and not finished yet (their lease still runs): one Celery task each."""
    return (
        OutboundJob.objects.filter(status=OutboundJob.PENDING, lease_expires_at__gte=now)
        .exclude(lease_owner="")
        .values("lease_owner")
        .distinct()
        .count()
    )


def claim_due(
    limit: int = CLAIM_LIMIT, now: dt.datetime | None = None, max_claims: int | None = None
) -> list[Claimed]:
    """Claim what is due: single jobs, or up to the kind's batch size of one connection's batchable jobs; at
    most `max_claims` claims (tasks), the workers' free capacity."""
    now = now or timezone.now()
    candidates = list(
        claimable(now).values_list(
            "pk", "kind", "connection_ref", "crm_connection__provider", "pbx_connection__provider"
        )[:limit]
    )
    # Batchable kinds: consecutive groups of up to batch_size jobs per (connection, kind), so a backlog drains
    # at batch_size × tasks per pass instead of one batch per pass.
    groups: dict[tuple[str, str], list[list[int]]] = {}
    singles: list[tuple[int, str]] = []
    for pk, kind, ref, crm_provider, pbx_provider in candidates:
        size = 1
        if kind not in PIPELINE_KINDS:
            kinds = provider_class(crm_provider or pbx_provider).job_kinds
            size = kinds[kind].batch_size if kind in kinds else 1
        if size > 1:
            batches = groups.setdefault((ref, kind), [[]])
            if len(batches[-1]) >= size:
                batches.append([])
            batches[-1].append(pk)
        else:
            singles.append((pk, kind))
    claimed: list[Claimed] = []
    wanted = [([pk], kind) for pk, kind in singles] + [
        (batch, kind) for (_ref, kind), batches in groups.items() for batch in batches
    ]
    # One transaction for the pass's claims: one commit, not one per claim (each claim is still atomic, and a
    # racing relay still loses a job to whichever UPDATE locked it first).
    with transaction.atomic():
        for ids, kind in wanted:
            if max_claims is not None and len(claimed) >= max_claims:
                break
            owner = uuid.uuid4().hex
            got = claim(ids, owner, now, timing(kind).lease)
            if got:
                claimed.append(Claimed(owner, got))
    return claimed


def release(job_ids: Sequence[int], owner: str) -> None:
    release_claims([Claimed(owner, list(job_ids))])


def release_claims(claims: Sequence[Claimed]) -> None:
    """Give the claims' jobs back at once: one UPDATE (each claim's owner is its own)."""
    owners = [claimed.owner for claimed in claims if claimed.owner]
    OutboundJob.objects.filter(
        lease_owner__in=owners, pk__in=[pk for c in claims for pk in c.job_ids]
    ).update(lease_owner="", lease_expires_at=None)


BACKLOG_KEY = "outbox:backlog"


def mark_backlog(backlog: bool) -> None:
    """Remember (shared cache, a few seconds) whether the last relay pass left due jobs behind for lack of
    capacity: only then does a finished task run a pass of its own (has_backlog). A cache outage costs only
    that shortcut."""
    try:
        if backlog:
            cache.set(BACKLOG_KEY, 1, 10)
        else:
            cache.delete(BACKLOG_KEY)
    except Exception as exc:
        logger.warning("relay: backlog flag not stored: %s", exc)


def has_backlog() -> bool:
    """A backlog waits and no other worker refilled in the last second (one pass over a large backlog costs
    tens of milliseconds: one per second from the workers, besides beat's, keeps them fed)."""
    try:
        return bool(cache.get(BACKLOG_KEY)) and cache.add(f"{BACKLOG_KEY}:refill", 1, 1)
    except Exception:
        return False  # without the cache, beat's pass alone refills


def relay(publish: Callable[[str, list[int]], Any], expire: bool = True) -> int:
    """One relay pass: expire, claim, and hand each claim to a Celery task. Returns how many jobs went out.

    Backpressure: a pass claims no more than the free capacity, OUTBOX_MAX_IN_FLIGHT minus the claims still
    leased (published, queued or running), so a backlog after an outage is fed to the broker as fast as the
    workers take it and a queued claim is never claimed twice while its lease runs. Besides beat's pass every
    1.5 s, a finished task runs a pass when the last one left due jobs behind (calls.tasks.send_jobs,
    has_backlog), so a busy pipeline refills itself without costing every task a pass.

    `publish(owner, job_ids)` sends the task; when the broker refuses, the lease is released so the next pass
    tries again instead of waiting for the lease to run out.
    """
    now = timezone.now()
    if expire:
        expire_due_jobs(now)
    free = settings.OUTBOX_MAX_IN_FLIGHT - in_flight(now)
    if free <= 0:
        mark_backlog(True)
        return 0
    sent = 0
    claims = claim_due(min(PASS_LIMIT, free * largest_batch()), now, max_claims=free)
    # Capacity used up (or more due than one pass fetches): finished tasks should refill at once.
    mark_backlog(len(claims) >= free or sum(len(c.job_ids) for c in claims) >= PASS_LIMIT)
    for index, claimed in enumerate(claims):
        try:
            publish(claimed.owner, claimed.job_ids)
            sent += len(claimed.job_ids)
        except Exception as exc:
            # The broker is down: release this claim and the rest at once rather than wait out its timeout
            # once per claim.
            logger.warning("relay: could not publish %s job(s): %s", len(claimed.job_ids), exc)
            release_claims(claims[index:])
            break
    return sent


# ---------------------------------------------------------------------------------------------------------
# Running jobs (inside a Celery task)
# ---------------------------------------------------------------------------------------------------------


def next_delay(failures: int, retry_after: float | None = None) -> dt.timedelta:
    """Delay before the next attempt after `failures` failed attempts, honouring Retry-After."""
    base = SCHEDULE[failures - 1] if failures - 1 < len(SCHEDULE) else STEADY_DELAY
    if failures > len(SCHEDULE):
        base = base * (1 + random.uniform(-JITTER, JITTER))
    if retry_after:
        base = max(base, min(float(retry_after), MAX_RETRY_AFTER))
    return scaled(base)


def _describe(exc: Exception) -> tuple[str, int | None, bool, float | None, bool, str]:
    status = getattr(exc, "status", None)
    permanent = bool(getattr(exc, "permanent", False))
    retry_after = getattr(exc, "retry_after", None)
    flag = bool(getattr(exc, "flag_connection", False)) or status in (401, 403)
    body = str(getattr(exc, "body", "") or "")[:2000]
    return str(exc)[:2000] or exc.__class__.__name__, status, permanent, retry_after, flag, body


def _held(owner: str, now: dt.datetime) -> Q:
    """The claim `owner` still holds the job: its lease, unexpired, on a pending job."""
    return Q(lease_owner=owner, lease_expires_at__gt=now, status=OutboundJob.PENDING) & ~Q(lease_owner="")


def _leased(job_ids: Sequence[int], owner: str) -> list[OutboundJob]:
    """The claim's jobs with their calls, while the claim holds an unexpired lease; their connection (one per
    claim) loaded once and shared, not once per job (a batch of 50 would decrypt the same secrets 50 times)."""
    # By primary key and owner only (status and expiry checked here): see claim() on the status index.
    now = timezone.now()
    jobs = [
        job
        for job in OutboundJob.objects.select_related("call")
        .filter(pk__in=list(job_ids), lease_owner=owner)
        .order_by("order_key", "id")
        if job.status == OutboundJob.PENDING and owner and job.lease_expires_at and job.lease_expires_at > now
    ]
    crm_ids = {job.crm_connection_id for job in jobs if job.crm_connection_id}
    pbx_ids = {job.pbx_connection_id for job in jobs if job.pbx_connection_id}
    crms = {c.pk: c for c in CrmConnection.objects.select_related("tenant").filter(pk__in=crm_ids)}
    pbxs = {p.pk: p for p in PbxConnection.objects.select_related("tenant").filter(pk__in=pbx_ids)}
    for job in jobs:
        connection = crms.get(job.crm_connection_id) or pbxs.get(job.pbx_connection_id)
        if job.crm_connection_id:
            job.crm_connection = connection
        elif job.pbx_connection_id:
            job.pbx_connection = connection
        if connection is not None and connection.tenant_id == job.tenant_id:
            job.tenant = connection.tenant
    return jobs


class LeaseLost(Exception):
    """The claim no longer holds this job (its lease ran out and another worker may have it)."""

    permanent = False


@contextlib.contextmanager
def on_behalf_of(job: OutboundJob) -> Iterator[None]:
    """A transaction for writes a handler makes on behalf of the job's claim (hold_lease first). A job run
    outside any claim (no lease_owner: a direct call) has nothing to fence."""
    with transaction.atomic():
        if job.lease_owner:
            hold_lease(job)
        yield


def hold_lease(job: OutboundJob) -> None:
    """Inside a transaction: lock the job row and make sure this claim still holds it, before a write made on
    its behalf (a handler's ingest, a stored recording). Raises LeaseLost otherwise; the relay cannot claim
    the job again until the transaction ends."""
    held = (
        OutboundJob.objects.select_for_update()
        .filter(_held(job.lease_owner, timezone.now()), pk=job.pk)
        .exists()
    )
    if not held:
        raise LeaseLost(f"job {job.pk}: the lease of claim {job.lease_owner or '-'} was lost")


def _expire_if_stale(job: OutboundJob, now: dt.datetime) -> bool:
    if job.expires_at and job.expires_at < now:
        why = "expired: not sent within its time to live"
    elif job.expires_on_call_end and job.call_id and job.call.ended:
        why = "expired: the call has ended"
    else:
        return False
    OutboundJob.objects.filter(_held(job.lease_owner, now), pk=job.pk).update(
        status=OutboundJob.EXPIRED, last_error=why, lease_owner="", lease_expires_at=None
    )
    return True


def run_claim(owner: str, job_ids: Sequence[int]) -> bool:
    """Perform the jobs a relay claimed under `owner`. A stale or repeated message finds no lease and does
    nothing, which makes the task idempotent. True when a job of the same call and connection waited for these
    (an ordered successor, e.g. WireCRM's NOTIFY_INTERNAL after NOTIFY_START) and is due now."""
    now = timezone.now()
    jobs = [job for job in _leased(job_ids, owner) if not _expire_if_stale(job, now)]
    if not jobs:
        return False
    started = time.monotonic()
    started_at = timezone.now()
    connection = jobs[0].connection
    try:
        # The connection's own allowed_networks, and the kind's total deadline (shorter than the lease).
        with connection.outbound_scope(), http.deadline(timing(jobs[0].kind).deadline):
            if jobs[0].kind in PIPELINE_KINDS:
                handler = import_string(PIPELINE_KINDS[jobs[0].kind][1])
                results: dict[int, str | Exception] = {job.pk: handler(job) for job in jobs}
            elif len(jobs) == 1:
                adapter = get_provider(connection)
                results = {jobs[0].pk: adapter.perform(jobs[0])}
            else:
                results = get_provider(connection).perform_batch(jobs)
    except Exception as exc:  # the whole claim failed (timeout, 5xx, refused)
        results = {job.pk: exc for job in jobs}
    duration_ms = int((time.monotonic() - started) * 1000)
    outcomes = [(job, results.get(job.pk, RuntimeError("no result"))) for job in jobs]
    record_sent(
        [(job, r) for job, r in outcomes if not isinstance(r, Exception)], started_at, duration_ms, len(jobs)
    )
    for job, result in outcomes:
        if isinstance(result, Exception):
            record_result(job, result, started_at, duration_ms, len(jobs))
    calls = {job.call_id for job in jobs if job.call_id and job.ordered}
    return bool(calls) and (
        OutboundJob.objects.filter(
            status=OutboundJob.PENDING,
            call_id__in=calls,
            connection_ref=jobs[0].connection_ref,
            next_attempt_at__lte=timezone.now(),
        ).exists()
    )


def record_sent(
    sent: Sequence[tuple[OutboundJob, Any]], started_at: dt.datetime, duration_ms: int, batch_size: int
) -> None:
    """The jobs of one claim the CRM accepted, recorded together: one UPDATE per distinct answer, which marks
    sent only the jobs the claim still holds (its lease_owner, unexpired) and returns them, and one INSERT of
    their attempts (a batch of uploads is 2 statements, not one per job). The attempts of jobs the claim no
    longer holds are logged as `fenced`."""
    if not sent:
        return
    now = timezone.now()
    owner = sent[0][0].lease_owner
    by_answer: dict[str, list[int]] = {}
    for job, result in sent:
        by_answer.setdefault(str(result or "")[:2000], []).append(job.pk)
    with transaction.atomic():
        held = {pk for answer, pks in by_answer.items() for pk in _mark_sent(pks, owner, now, answer)}
        JobAttempt.objects.bulk_create(
            [
                JobAttempt(
                    job=job,
                    started_at=started_at,
                    duration_ms=duration_ms,
                    outcome=JobAttempt.SENT if job.pk in held else JobAttempt.FENCED,
                    status_code=200,
                    response=str(result or "")[:2000],
                    batch_size=batch_size,
                )
                for job, result in sent
            ]
        )
    fenced = [job.pk for job, _ in sent if job.pk not in held]
    if fenced:
        logger.warning(
            "jobs %s: lease of claim %s lost; their sent results are recorded as fenced and ignored",
            fenced,
            owner,
        )


def _mark_sent(pks: Sequence[int], owner: str, now: dt.datetime, answer: str) -> list[int]:
    """Mark sent those of `pks` the claim `owner` still holds (`_held`); their ids. One UPDATE … RETURNING
    (PostgreSQL, SQLite ≥ 3.35), so the claim's rows are not read and locked first. Rows found by primary key
    only, as in claim()."""
    if not owner:
        return []
    ops = db_connection.ops
    sql = (
        f"UPDATE {OutboundJob._meta.db_table} SET status = %s, attempts = attempts + 1, sent_at = %s, "  # noqa: S608 - our table name; values are parameters
        "last_response = %s, last_status = 200, last_error = '', lease_owner = '', lease_expires_at = NULL "
        f"WHERE id IN ({', '.join(['%s'] * len(pks))}) AND lease_owner = %s AND lease_expires_at > %s "
        "AND (status || '') = %s RETURNING id"
    )
    stamp = ops.adapt_datetimefield_value(now)
    params = [OutboundJob.SENT, stamp, answer, *pks, owner, stamp, OutboundJob.PENDING]
    with db_connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def record_result(
    job: OutboundJob, result: str | Exception, started_at: dt.datetime, duration_ms: int, batch_size: int
) -> None:
    """Write the attempt to the ledger and its verdict to the job, only while the claim holds the job's lease;
    otherwise the attempt is logged as `fenced` and the job is left as the lease's new holder has it."""
    if not isinstance(result, Exception):
        record_sent([(job, result)], started_at, duration_ms, batch_size)
        return
    now = timezone.now()
    message, status, permanent, retry_after, flag, body = _describe(result)
    attempts = job.attempts + 1
    if permanent:
        new_status, next_at = OutboundJob.FAILED, job.next_attempt_at
    else:
        next_at = now + next_delay(attempts, retry_after)
        new_status = (
            OutboundJob.DEAD if job.window_ends_at and next_at > job.window_ends_at else OutboundJob.PENDING
        )
    changes: dict[str, Any] = {
        "status": new_status,
        "attempts": attempts,
        "next_attempt_at": next_at,
        "last_error": message,
        "last_status": status,
        "last_response": body,
        "lease_owner": "",
        "lease_expires_at": None,
    }
    with transaction.atomic():
        updated = OutboundJob.objects.filter(_held(job.lease_owner, now), pk=job.pk).update(**changes)
        if not updated:
            outcome = JobAttempt.FENCED
        else:
            outcome = JobAttempt.PERMANENT if permanent else JobAttempt.TRANSIENT
        JobAttempt.objects.create(
            job=job,
            started_at=started_at,
            duration_ms=duration_ms,
            outcome=outcome,
            status_code=status,
            error=message,
            response=body,
            batch_size=batch_size,
        )
    if not updated:
        logger.warning(
            "job %s (%s → %s): lease of claim %s lost; its %s result is recorded as fenced and ignored",
            job.pk,
            job.kind,
            job.connection_ref,
            job.lease_owner or "-",
            "failed",
        )
        return
    if not hasattr(result, "permanent"):
        logger.exception("job %s (%s) crashed", job.pk, job.kind, exc_info=result)  # type: ignore[arg-type]
    level = logging.WARNING if new_status == OutboundJob.PENDING else logging.ERROR
    logger.log(level, "job %s (%s → %s) %s: %s", job.pk, job.kind, job.connection_ref, new_status, message)
    if new_status in {OutboundJob.FAILED, OutboundJob.DEAD} and job.kind in PIPELINE_GIVE_UP:
        import_string(PIPELINE_GIVE_UP[job.kind])(job, message)
    if permanent and flag:
        job.connection.flag_error(f"{job.kind}: {message}")
    elif new_status == OutboundJob.DEAD:
        job.connection.flag_error(f"{job.kind}: gave up after {attempts} attempts: {message}")


# ---------------------------------------------------------------------------------------------------------
# Admin actions
# ---------------------------------------------------------------------------------------------------------


def retry_now(jobs: QuerySet[OutboundJob]) -> int:
    """Put failed or dead jobs back in the queue with a fresh window (expired pop-ups stay expired)."""
    now = timezone.now()
    count = 0
    for job in jobs.filter(status__in=[OutboundJob.FAILED, OutboundJob.DEAD]).select_related(
        "crm_connection", "pbx_connection"
    ):
        try:
            window = job_kind(job.connection, job.kind).window
        except KeyError:  # a kind its adapter no longer declares: give it the longest window
            window = JobKind().window
        OutboundJob.objects.filter(pk=job.pk).update(
            status=OutboundJob.PENDING,
            next_attempt_at=now,
            window_ends_at=now + window,
            lease_owner="",
            lease_expires_at=None,
        )
        count += 1
    return count
