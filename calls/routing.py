""" "Whose caller is this?" under a time budget.

The tenant's CRMs are asked concurrently; the answer of the highest-priority CRM (lower number first) that
arrives before the deadline wins: the extension from the first such answer that has one, the display name from
the first that has one. Answers are cached on the shared cache; a CRM that failed 5 times in a row is skipped
for 30 s (circuit breaker); without a CRM answer the extension that last talked with this number is used,
unless its CRM status says the employee is not free. Every extension is checked against the tenant's
Extensions before it can reach a PBX.

Adapters' `lookup()` runs in worker threads and must not touch the database (everything it needs is on the
connection object passed in), so a slow CRM costs a thread, never a database connection or the deadline.

Bulkheads (docs/reliability.md): a tenant holds at most ROUTING_TENANT_THREADS lookups at once (more are not
asked: the cached answer, if any, is used), every lookup ends within ROUTING_LOOKUP_SECONDS whatever the CRM
does (a total deadline on its requests), and one the routing deadline left behind is not a failure: when its
answer arrives it is cached for the caller's next call. The cache itself is asked with a short timeout and a
fallback (portal/fastcache.py), so a frozen Redis cannot push an answer past its budget.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from calls.models import Call, RoutingDecision
from integrations import http
from integrations.models import CrmConnection, Extension, ExtensionMapping, PbxConnection, Tenant
from integrations.providers.base import RoutingAnswer, RoutingQuery, get_provider
from portal import fastcache

logger = logging.getLogger("callbridge.routing")

SAFETY_MARGIN_MS = 100
BREAKER_THRESHOLD = 5
BREAKER_OPEN_SECONDS = 30
POOL_THREADS = 64
_executor = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="routing")
_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def tenant_slots(tenant_id: int) -> threading.BoundedSemaphore:
    """The tenant's share of the lookup pool (ROUTING_TENANT_THREADS lookups in flight at most)."""
    with _slots_lock:
        slots = _slots.get(tenant_id)
        if slots is None:
            slots = _slots[tenant_id] = threading.BoundedSemaphore(settings.ROUTING_TENANT_THREADS)
        return slots


def _breaker_key(crm: CrmConnection | int, suffix: str) -> str:
    return f"routing:breaker:{crm if isinstance(crm, int) else crm.pk}:{suffix}"


def _label(crm: CrmConnection) -> str:
    """How log lines name a CRM connection here: from its own fields, never a query (a lookup may report after
    its tenant is gone)."""
    return f"CRM connection {crm.pk} ({crm.key}, {crm.provider})"


def breaker_open(crm: CrmConnection) -> bool:
    key = _breaker_key(crm, "open")
    return bool(fastcache.guarded(lambda cache: cache.get(key), None, "routing breaker"))


def _record_failure(crm: CrmConnection) -> None:
    _record_failure_of(crm.pk, _label(crm))


def _record_failure_of(pk: int, label: str) -> None:
    fastcache.guarded(lambda cache: _count_failure(cache, pk, label), None, "routing breaker")


def _count_failure(cache: Any, pk: int, label: str) -> None:
    key = _breaker_key(pk, "failures")
    cache.add(key, 0, BREAKER_OPEN_SECONDS * 10)
    try:
        failures = cache.incr(key)
    except ValueError:
        cache.set(key, 1, BREAKER_OPEN_SECONDS * 10)
        failures = 1
    if failures >= BREAKER_THRESHOLD:
        logger.warning(
            "routing: %s failed %s times in a row; skipped for %s s", label, failures, BREAKER_OPEN_SECONDS
        )
        cache.set(_breaker_key(pk, "open"), 1, BREAKER_OPEN_SECONDS)
        cache.delete(key)


def _record_success(crm: CrmConnection | int) -> None:
    key = _breaker_key(crm, "failures")
    fastcache.guarded(lambda cache: cache.delete(key), None, "routing breaker")


def _cache_answers(answers: dict[str, dict[str, str]]) -> None:
    if answers:
        timeout = settings.ROUTING_CACHE_SECONDS
        fastcache.guarded(lambda cache: cache.set_many(answers, timeout), None, "routing answers")


def _cache_key(tenant: Tenant, crm: CrmConnection, caller: str, did: str) -> str:
    # Per CRM: a CRM asked on every call (asks_every_call) can be asked while another's answer is cached.
    return f"routing:answer:{tenant.pk}:{crm.pk}:{caller}:{did}"


def remember_answer(crm: CrmConnection, caller: str, did: str, answer: RoutingAnswer | None) -> None:
    """Cache a CRM's answer that arrived outside a routing question (WireCRM's NOTIFY_START sent by the outbox),
    so the caller's next call is routed by it."""
    if answer is not None and (answer.extension or answer.display_name) and caller:
        value = {"extension": answer.extension, "display_name": answer.display_name}
        _cache_answers({_cache_key(crm.tenant, crm, caller, did): value})


@dataclass
class _Asked:
    crm: CrmConnection
    future: Future[RoutingAnswer | None] | None = None
    cached: RoutingAnswer | None = None
    # The question itself changes the CRM (WireCRM's NOTIFY_START): never given up on before the deadline,
    # or it would be marked late and sent a second time.
    must_finish: bool = False


def _ask(adapter: Any, query: RoutingQuery, timeout: float) -> RoutingAnswer | None:
    # The CRM connection's own allowed_networks, and a total deadline: an abandoned lookup frees its thread.
    with adapter.connection.outbound_scope(), http.deadline(timeout):
        return adapter.lookup(query, timeout)


# Lookups the routing deadline left behind report here when they finish: (CRM connection id, its label, the
# answer's cache key, the answer, failed). The next routing question of this process records them (cache and
# breaker), so routing threads never touch the cache or the database.
_late_results: queue.SimpleQueue[tuple[int, str, str, RoutingAnswer | None, bool]] = queue.SimpleQueue()


def _when_late_answer_arrives(crm: CrmConnection, key: str, future: Future[RoutingAnswer | None]) -> None:
    """A lookup the routing deadline left behind: its answer, when it comes, is cached for the next call and
    counts as a success; only an error counts against the CRM's breaker."""
    pk, label = crm.pk, _label(crm)

    def done(finished: Future[RoutingAnswer | None]) -> None:
        if finished.cancelled():
            return
        failed = finished.exception() is not None
        _late_results.put((pk, label, key, None if failed else finished.result(), failed))

    future.add_done_callback(done)


def record_late_results() -> None:
    """Record what abandoned lookups brought back since the last routing question of this process."""
    answers: dict[str, dict[str, str]] = {}
    for pk, label, key, answer, failed in forget_late_results():
        if failed:
            _record_failure_of(pk, label)
            continue
        _record_success(pk)
        if answer is not None and (answer.extension or answer.display_name):
            answers[key] = {"extension": answer.extension, "display_name": answer.display_name}
            logger.info("routing: %s answered late; cached for the next call", label)
    _cache_answers(answers)


def forget_late_results() -> list[tuple[int, str, str, RoutingAnswer | None, bool]]:
    """Take every late result reported so far (tests drop them between tests)."""
    taken = []
    while True:
        try:
            taken.append(_late_results.get_nowait())
        except queue.Empty:
            return taken


def resolve(
    tenant: Tenant,
    caller: str,
    did: str = "",
    *,
    call: Call | None = None,
    provider_call_id: str = "",
    deadline_ms: int | None = None,
    pbx_connection: PbxConnection | None = None,
    defer_writes: bool = False,
) -> RoutingDecision:
    """Answer within min(deadline_ms, ROUTING_BUDGET_MS) minus a safety margin; record the decision.

    With `defer_writes` the decision comes back unsaved and nothing is written to the cache: the caller
    answers the PBX first and then calls `save_decision()` (Rostelecom's get_number_info), so the writes never
    add to the PBX's wait."""
    started = time.monotonic()
    budget_ms = min(deadline_ms or settings.ROUTING_BUDGET_MS, settings.ROUTING_BUDGET_MS)
    budget = max(0.05, (budget_ms - SAFETY_MARGIN_MS) / 1000)
    deadline = started + budget
    query = RoutingQuery(
        caller=caller,
        did=did,
        provider_call_id=provider_call_id or (call.provider_call_id if call else ""),
        tenant_id=tenant.pk,
        call=call,
    )
    extension, name, source, detail, fresh = _ask_crms(tenant, query, deadline)

    if extension and not Extension.objects.filter(tenant=tenant, number=extension).exists():
        logger.warning(
            "routing: %s answered extension %r, which the tenant does not have; dropped", source, extension
        )
        detail["dropped_extension"] = extension
        extension = ""
    if not extension:
        fallback = _history_extension(tenant, caller)
        if fallback:
            extension = fallback
            if source == "none":
                source = "history"
            else:
                detail["extension_from"] = "history"
    latency_ms = int((time.monotonic() - started) * 1000)
    decision = RoutingDecision(
        tenant=tenant,
        pbx_connection=pbx_connection or (call.pbx_connection if call else None),
        call=call,
        provider_call_id=query.provider_call_id,
        caller=caller,
        did=did,
        extension=extension,
        display_name=name[:200],
        source=source[:60],
        latency_ms=latency_ms,
        detail=detail,
    )
    decision._fresh_answers = fresh  # type: ignore[attr-defined]
    if not defer_writes:
        save_decision(decision)
    return decision


def save_decision(decision: RoutingDecision) -> RoutingDecision:
    """Record the decision and cache the CRMs' fresh answers (each CRM's own, for the next call)."""
    _cache_answers(getattr(decision, "_fresh_answers", {}))
    decision._fresh_answers = {}  # type: ignore[attr-defined]
    if decision.pk is None:
        decision.save()
    return decision


def _ask_crms(
    tenant: Tenant, query: RoutingQuery, deadline: float
) -> tuple[str, str, str, dict[str, Any], dict[str, dict[str, str]]]:
    record_late_results()
    crms = list(CrmConnection.objects.filter(tenant=tenant, active=True).order_by("priority", "id"))
    keys = {crm.pk: _cache_key(tenant, crm, query.caller, query.did) for crm in crms}
    breakers = {crm.pk: _breaker_key(crm, "open") for crm in crms}
    wanted = [*keys.values(), *breakers.values()]
    # One round trip for the answers and the breakers, on the short request timeout (a fallback of nothing
    # cached and every breaker closed when the cache does not answer).
    cached_answers = (
        fastcache.guarded(lambda cache: cache.get_many(wanted), {}, "routing answers") if crms else {}
    )
    asked: list[_Asked] = []
    detail: dict[str, Any] = {"asked": [], "skipped": []}
    slots = tenant_slots(tenant.pk)
    for crm in crms:
        adapter = get_provider(crm)
        cached = cached_answers.get(keys[crm.pk])
        item = _Asked(crm, cached=RoutingAnswer(**cached) if cached else None)
        # answers_routing() is asked once: an adapter may do work there (the sandbox CRM reads its table).
        answers = adapter.answers_routing(query)
        every_call = answers and adapter.asks_every_call(query)
        if item.cached is not None and not every_call:
            asked.append(item)
            continue
        if not answers:
            continue
        if cached_answers.get(breakers[crm.pk]):
            detail["skipped"].append(crm.key)
            asked.append(item)  # its cached answer, if any, still counts
            continue
        if not slots.acquire(blocking=False):
            # The tenant already holds its share of the pool (its CRM hangs): not asked, nobody else waits.
            detail.setdefault("busy", []).append(crm.key)
            asked.append(item)
            continue
        # The lookup may outlive the routing deadline (its late answer is cached), never ROUTING_LOOKUP_SECONDS.
        lookup_seconds = max(settings.ROUTING_LOOKUP_SECONDS, deadline - time.monotonic())
        item.future = _executor.submit(_ask, adapter, query, lookup_seconds)
        item.future.add_done_callback(lambda _f, slots=slots: slots.release())
        item.must_finish = every_call
        asked.append(item)
        detail["asked"].append(crm.key)

    pending = {a.future for a in asked if a.future is not None}
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        _, pending = wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
        if _settled(asked):
            break

    extension, name, source = "", "", "none"
    fresh: dict[str, dict[str, str]] = {}
    for item in asked:
        answer, answered_by = item.cached, "cache"
        if item.future is not None and not item.future.done():
            detail.setdefault("late", []).append(item.crm.key)
            if not item.future.cancel():  # not started yet: cancelled; running: its answer is kept for later
                _when_late_answer_arrives(item.crm, keys[item.crm.pk], item.future)
        elif item.future is not None:
            try:
                answer, answered_by = item.future.result(), item.crm.key
            except Exception as exc:
                logger.warning("routing: %s failed: %s", _label(item.crm), exc)
                detail.setdefault("failed", []).append(item.crm.key)
                _record_failure(item.crm)
            else:
                _record_success(item.crm)
                if answer is not None and (answer.extension or answer.display_name):
                    key = _cache_key(tenant, item.crm, query.caller, query.did)
                    fresh[key] = {"extension": answer.extension, "display_name": answer.display_name}
        if answer is None:
            continue
        if answer.extension and not extension:
            extension, source = answer.extension.strip(), answered_by
        if answer.display_name and not name:
            name = answer.display_name.strip()
            if source == "none":
                source = answered_by
    return extension, name, source, detail, fresh


def _settled(asked: list[_Asked]) -> bool:
    """Stop waiting once every CRM ranked above the first complete answer has answered, and every CRM whose
    question has a side effect (must_finish) has answered."""
    if any(a.must_finish and a.future is not None and not a.future.done() for a in asked):
        return False
    have_extension = have_name = False
    for item in asked:
        if item.future is None:
            answer = item.cached
        elif not item.future.done():
            return False
        elif item.future.exception() is not None:
            continue
        else:
            answer = item.future.result()
        if answer:
            have_extension = have_extension or bool(answer.extension)
            have_name = have_name or bool(answer.display_name)
        if have_extension and have_name:
            return True
    return True


def _history_extension(tenant: Tenant, caller: str) -> str:
    """The extension that last talked with this number, unless its CRM status says it is not free."""
    last = (
        Call.objects.filter(tenant=tenant, client_phone=caller)
        .exclude(last_answered_extension="")
        .order_by("-started_at", "-id")
        .values_list("last_answered_extension", flat=True)
        .first()
    )
    if not last:
        return ""
    statuses = ExtensionMapping.objects.filter(extension__tenant=tenant, extension__number=last).exclude(
        status=""
    )
    latest = statuses.order_by("-status_at").first()
    if latest and latest.status != "free":
        logger.info("routing: history extension %s skipped: CRM status %s", last, latest.status)
        return ""
    return last
