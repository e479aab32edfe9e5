"""The figures of a tenant's dashboard (the admin index): a handful of aggregate queries over the last days.

Every query is one GROUP BY over an index that starts with the tenant (see bench/dashboard.py for the timing
on 100,000 calls): calls per local day and result, the busiest local hours, delivery health per CRM connection,
recordings waiting, routing answers by source. Days and hours are the tenant's own (its time zone).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Avg, Count, Max, Min, Q
from django.db.models.functions import ExtractHour, TruncDate
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from calls.models import RESULT_LABELS, Call, OutboundJob, Recording, RoutingDecision
from integrations.models import CrmConnection, Tenant

DAYS = 30
MISSED_RESULTS = ("missed", "no_answer", "busy", "not_available", "cancelled")


@dataclass
class DeliveryHealth:
    connection: CrmConnection
    pending: int = 0
    retrying: int = 0
    failed: int = 0
    held: int = 0
    oldest_pending: dt.datetime | None = None
    last_error: str = ""
    last_error_at: dt.datetime | None = None


@dataclass
class Dashboard:
    tenant: Tenant
    since: dt.datetime
    days: list[dt.date] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    per_day: dict[str, list[int]] = field(default_factory=dict)  # result → count per day in `days`
    total: int = 0
    incoming: int = 0
    missed: int = 0
    avg_wait: float | None = None
    avg_talk: float | None = None
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    delivery: list[DeliveryHealth] = field(default_factory=list)
    recordings_waiting: int = 0
    routing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def missed_rate(self) -> float | None:
        """Missed incoming calls over all incoming calls that ended, in percent."""
        return round(100.0 * self.missed / self.incoming, 1) if self.incoming else None

    @property
    def busiest_hours(self) -> list[tuple[int, int]]:
        ranked = sorted(((count, hour) for hour, count in enumerate(self.hours) if count), reverse=True)
        return [(hour, count) for count, hour in ranked[:3]]

    def chart_data(self) -> dict[str, Any]:
        return {
            "days": [day.isoformat() for day in self.days],
            "series": [
                {"result": r, "label": str(RESULT_LABELS.get(r, _("in progress"))), "counts": self.per_day[r]}
                for r in self.results
            ],
            "hours": self.hours,
            "hours_label": str(_("calls")),
        }


def tenant_dashboard(tenant: Tenant, now: dt.datetime | None = None, days: int = DAYS) -> Dashboard:
    zone = zoneinfo.ZoneInfo(tenant.time_zone)
    now = now or timezone.now()
    today = now.astimezone(zone).date()
    first_day = today - dt.timedelta(days=days - 1)
    since = dt.datetime.combine(first_day, dt.time(), zone)
    board = Dashboard(tenant=tenant, since=since)
    board.days = [first_day + dt.timedelta(days=n) for n in range(days)]
    calls = Call.objects.filter(tenant=tenant, started_at__gte=since).order_by()

    rows = (
        calls.annotate(day=TruncDate("started_at", tzinfo=zone))
        .values("day", "result")
        .annotate(n=Count("id"))
    )
    index = {day: n for n, day in enumerate(board.days)}
    for row in rows:
        result = row["result"] or "in_progress"
        counts = board.per_day.setdefault(result, [0] * days)
        if row["day"] in index:
            counts[index[row["day"]]] += row["n"]
        board.total += row["n"]
    board.results = sorted(board.per_day, key=lambda r: -sum(board.per_day[r]))

    figures = calls.aggregate(
        incoming=Count("id", filter=Q(direction=Call.IN, ended=True)),
        missed=Count("id", filter=Q(direction=Call.IN, ended=True, result__in=MISSED_RESULTS)),
        avg_wait=Avg("wait_seconds"),
        avg_talk=Avg("talk_seconds", filter=Q(talk_seconds__gt=0)),
    )
    board.incoming, board.missed = figures["incoming"], figures["missed"]
    board.avg_wait, board.avg_talk = figures["avg_wait"], figures["avg_talk"]

    for row in (
        calls.annotate(hour=ExtractHour("started_at", tzinfo=zone)).values("hour").annotate(n=Count("id"))
    ):
        board.hours[row["hour"]] = row["n"]

    board.delivery = delivery_health(tenant)
    board.recordings_waiting = Recording.objects.filter(
        call__tenant=tenant, state__in=[Recording.EXPECTED, Recording.FETCHING]
    ).count()
    board.routing = list(
        RoutingDecision.objects.filter(tenant=tenant, created_at__gte=since)
        .order_by()
        .values("source")
        .annotate(
            n=Count("id"),
            answered=Count("id", filter=~Q(extension="")),
            avg_ms=Avg("latency_ms"),
            max_ms=Max("latency_ms"),
        )
        .order_by("-n")
    )
    return board


def delivery_health(tenant: Tenant) -> list[DeliveryHealth]:
    """Per CRM connection: open jobs (pending, of which retrying), failed or dead, held (pending towards a
    connection that is switched off), the oldest pending and the last error."""
    connections = {c.pk: DeliveryHealth(connection=c) for c in CrmConnection.objects.filter(tenant=tenant)}
    open_statuses = [OutboundJob.PENDING, OutboundJob.FAILED, OutboundJob.DEAD]
    rows = (
        OutboundJob.objects.filter(tenant=tenant, crm_connection__isnull=False, status__in=open_statuses)
        .order_by()
        .values("crm_connection", "status")
        .annotate(n=Count("id"), retrying=Count("id", filter=Q(attempts__gt=0)), oldest=Min("created_at"))
    )
    for row in rows:
        health = connections.get(row["crm_connection"])
        if health is None:
            continue
        if row["status"] == OutboundJob.PENDING:
            if health.connection.active:
                health.pending += row["n"]
                health.retrying += row["retrying"]
            else:
                health.held += row["n"]
            health.oldest_pending = min(filter(None, [health.oldest_pending, row["oldest"]]), default=None)
        else:
            health.failed += row["n"]
    for health in connections.values():
        health.last_error = health.connection.last_error
        health.last_error_at = health.connection.last_error_at
    return list(connections.values())
