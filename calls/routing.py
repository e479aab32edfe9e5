""" "Whose caller is this?" under a time budget.

The tenant's CRMs are asked concurrently; the answer of the highest-priority CRM (lower number first) that
arrives before the deadline wins: the extension from the first such answer that has one, the display name from
the first that has one. Answers are cached on the shared cache; a CRM that failed 5 times in a row is skipped
for 30 s (circuit breaker); without a CRM answer the extension that last talked with this number is used,
unless its CRM status says the employee is not free. Every extension is checked against the tenant's
Extensions before it can reach a PBX.

Adapters' `lookup()` runs in worker threads and must not touch the database (everything it needs is on the
connection object passed in), so a slow CRM costs a thread, never a database connection or the deadline.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache

from calls.models import Call, RoutingDecision
from integrations.models import CrmConnection, Extension, ExtensionMapping, PbxConnection, Tenant
from integrations.providers.base import RoutingAnswer, RoutingQuery, get_provider

logger = logging.getLogger("callbridge.routing")

SAFETY_MARGIN_MS = 100
BREAKER_THRESHOLD = 5
BREAKER_OPEN_SECONDS = 30
_executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="routing")


def _breaker_key(crm: CrmConnection, suffix: str) -> str:
    return f"routing:breaker:{crm.pk}:{suffix}"


def breaker_open(crm: CrmConnection) -> bool:
    return bool(cache.get(_breaker_key(crm, "open")))


def _record_failure(crm: CrmConnection) -> None:
    key = _breaker_key(crm, "failures")
    cache.add(key, 0, BREAKER_OPEN_SECONDS * 10)
    try:
        failures = cache.incr(key)
    except ValueError:
        cache.set(key, 1, BREAKER_OPEN_SECONDS * 10)
        failures = 1
    if failures >= BREAKER_THRESHOLD:
        logger.warning(
            "routing: %s failed %s times in a row; skipped for %s s", crm, failures, BREAKER_OPEN_SECONDS
        )
        cache.set(_breaker_key(crm, "open"), 1, BREAKER_OPEN_SECONDS)
        cache.delete(key)


def _record_success(crm: CrmConnection) -> None:
    cache.delete(_breaker_key(crm, "failures"))


def _cache_key(tenant: Tenant, crm: CrmConnection, caller: str, did: str) -> str:
    # Per CRM: a CRM asked on every call (asks_every_call) can be asked while another's answer is cached.
    return f"routing:answer:{tenant.pk}:{crm.pk}:{caller}:{did}"


def remember_answer(crm: CrmConnection, caller: str, did: str, answer: RoutingAnswer | None) -> None:
    """Cache a CRM's answer that arrived outside a routing question (WireCRM's NOTIFY_START sent by the outbox),
    so the caller's next call is routed by it."""
    if answer is not None and (answer.extension or answer.display_name) and caller:
        value = {"extension": answer.extension, "display_name": answer.display_name}
        cache.set(_cache_key(crm.tenant, crm, caller, did), value, settings.ROUTING_CACHE_SECONDS)


@dataclass
class _Asked:
    crm: CrmConnection
    future: Future[RoutingAnswer | None] | None = None
    cached: RoutingAnswer | None = None
    # The question itself changes the CRM (WireCRM's NOTIFY_START): never given up on before the deadline,
    # or it would be marked late and sent a second time.
    must_finish: bool = False


def _ask(adapter: Any, query: RoutingQuery, timeout: float) -> RoutingAnswer | None:
    with adapter.connection.outbound_scope():  # the CRM connection's own allowed_networks
        return adapter.lookup(query, timeout)


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
    for key, answer in getattr(decision, "_fresh_answers", {}).items():
        cache.set(key, answer, settings.ROUTING_CACHE_SECONDS)
    decision._fresh_answers = {}  # type: ignore[attr-defined]
    if decision.pk is None:
        decision.save()
    return decision


def _ask_crms(
    tenant: Tenant, query: RoutingQuery, deadline: float
) -> tuple[str, str, str, dict[str, Any], dict[str, dict[str, str]]]:
    crms = list(CrmConnection.objects.filter(tenant=tenant, active=True).order_by("priority", "id"))
    keys = {crm.pk: _cache_key(tenant, crm, query.caller, query.did) for crm in crms}
    cached_answers = cache.get_many(list(keys.values())) if crms else {}
    asked: list[_Asked] = []
    detail: dict[str, Any] = {"asked": [], "skipped": []}
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
        if breaker_open(crm):
            detail["skipped"].append(crm.key)
            asked.append(item)  # its cached answer, if any, still counts
            continue
        timeout = max(0.05, deadline - time.monotonic())
        item.future = _executor.submit(_ask, adapter, query, timeout)
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
            _record_failure(item.crm)
        elif item.future is not None:
            try:
                answer, answered_by = item.future.result(), item.crm.key
            except Exception as exc:
                logger.warning("routing: %s failed: %s", item.crm, exc)
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
