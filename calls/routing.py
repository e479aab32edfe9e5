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


def _cache_key(tenant: Tenant, caller: str, did: str) -> str:
    return f"routing:answer:{tenant.pk}:{caller}:{did}"


@dataclass
class _Asked:
    crm: CrmConnection
    future: Future[RoutingAnswer | None]


def _ask(adapter: Any, query: RoutingQuery, timeout: float) -> RoutingAnswer | None:
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
) -> RoutingDecision:
    """Answer within min(deadline_ms, ROUTING_BUDGET_MS) minus a safety margin; record the decision."""
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
    extension, name, source, detail = "", "", "none", {}

    cached = cache.get(_cache_key(tenant, caller, did))
    if cached:
        extension, name, source = cached.get("extension", ""), cached.get("display_name", ""), "cache"
    else:
        extension, name, source, detail = _ask_crms(tenant, query, deadline)
        if extension or name:
            cache.set(
                _cache_key(tenant, caller, did),
                {"extension": extension, "display_name": name},
                settings.ROUTING_CACHE_SECONDS,
            )

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
    return RoutingDecision.objects.create(
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


def _ask_crms(tenant: Tenant, query: RoutingQuery, deadline: float) -> tuple[str, str, str, dict[str, Any]]:
    crms = list(CrmConnection.objects.filter(tenant=tenant, active=True).order_by("priority", "id"))
    asked: list[_Asked] = []
    detail: dict[str, Any] = {"asked": [], "skipped": []}
    for crm in crms:
        adapter = get_provider(crm)
        if not adapter.answers_routing(query):
            continue
        if breaker_open(crm):
            detail["skipped"].append(crm.key)
            continue
        timeout = max(0.05, deadline - time.monotonic())
        asked.append(_Asked(crm, _executor.submit(_ask, adapter, query, timeout)))
        detail["asked"].append(crm.key)

    pending = {a.future for a in asked}
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        _, pending = wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
        if _settled(asked):
            break

    extension, name, source = "", "", "none"
    for item in asked:
        if not item.future.done():
            detail.setdefault("late", []).append(item.crm.key)
            _record_failure(item.crm)
            continue
        try:
            answer = item.future.result()
        except Exception as exc:
            logger.warning("routing: %s failed: %s", item.crm, exc)
            detail.setdefault("failed", []).append(item.crm.key)
            _record_failure(item.crm)
            continue
        _record_success(item.crm)
        if answer is None:
            continue
        if answer.extension and not extension:
            extension, source = answer.extension.strip(), item.crm.key
        if answer.display_name and not name:
            name = answer.display_name.strip()
            if source == "none":
                source = item.crm.key
    return extension, name, source, detail


def _settled(asked: list[_Asked]) -> bool:
    """Stop waiting once every CRM ranked above the first complete answer has answered."""
    have_extension = have_name = False
    for item in asked:
        if not item.future.done():
            return False
        if item.future.exception() is not None:
            continue
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
