"""GET /metrics in the Prometheus text format; every name starts with `callbridge_`.

Two sources, so every web process answers the same:

* **The database, read at scrape time**, for everything that happens in Celery workers or in any web process:
  events processed and the processing backlog, outbox jobs by kind and state, CRM deliveries (job attempts) by
  provider and outcome with their latency, routing answers by source with their latency, recordings by state,
  open routing breakers (shared cache). Counters read this way are totals of rows: retention purging old rows
  lowers them, which Prometheus treats as a counter reset.
* **Web-only counters** (inbound webhooks by provider and status) kept by prometheus-client: with
  PROMETHEUS_MULTIPROC_DIR set (gunicorn with several workers) in its multiprocess mode, so a scrape that lands
  on any worker sums them all; without it, in this process's memory (runserver, tests).

Access: with METRICS_TOKEN set, `Authorization: Bearer <METRICS_TOKEN>` is required (401 otherwise); unset,
the endpoint exists only with DEBUG (404 otherwise).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Count, F, Min, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from integrations.providers.base import REGISTRY, secrets_equal

PREFIX = "callbridge_"
# Latency buckets in seconds: webhook answers and CRM lookups live in the sub-second range, deliveries up to
# the HTTP client's timeouts.
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROUTING_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 3.0)
HOOK_PATH = re.compile(r"^/hooks/(?P<provider>[^/]+)/")

WEB_REGISTRY = CollectorRegistry(auto_describe=True)
WEBHOOKS = Counter(
    f"{PREFIX}webhooks",
    "Inbound provider requests (/hooks/...) answered, by provider and HTTP status.",
    ["provider", "status"],
    registry=WEB_REGISTRY,
)


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


class WebhookMetricsMiddleware:
    """Counts every /hooks/ answer, whatever produced it (the view, a 413 for an oversized body, a 404)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        match = HOOK_PATH.match(request.path_info)
        if match:
            # Only registry keys become label values: a scanner must not grow the label set without bound.
            provider = match["provider"] if match["provider"] in REGISTRY else "unknown"
            WEBHOOKS.labels(provider=provider, status=str(response.status_code)).inc()
        return response


# ---------------------------------------------------------------------------------------------------------
# Read from the database at scrape time
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventProcessing:
    processed_by_provider: dict[str, int]
    waiting: int
    oldest_waiting_seconds: float


def event_processing(now: dt.datetime) -> EventProcessing:
    """Events applied to their calls (by PBX provider) and the inbox's backlog: how many wait, and for how
    long (webhooks store events; the inbox processor applies them)."""
    from calls.models import CallEvent

    rows = (
        CallEvent.objects.filter(status=CallEvent.DONE)
        .values("pbx_connection__provider")
        .annotate(n=Count("id"))
        .order_by()
    )
    pending = CallEvent.objects.filter(status=CallEvent.PENDING).aggregate(
        n=Count("id"), oldest=Min("received_at")
    )
    oldest = (now - pending["oldest"]).total_seconds() if pending["oldest"] else 0.0
    return EventProcessing(
        {r["pbx_connection__provider"]: r["n"] for r in rows}, pending["n"], max(0.0, oldest)
    )


def _histogram(
    name: str, documentation: str, label_names: list[str], rows: Iterable[dict[str, Any]], buckets: tuple
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=label_names)
    for row in rows:
        cumulative = [(str(bound), row[f"le_{index}"]) for index, bound in enumerate(buckets)]
        cumulative.append(("+Inf", row["count"]))
        family.add_metric(
            [row[label] or "" for label in label_names], cumulative, (row["sum_ms"] or 0) / 1000
        )
    return family


def _bucket_counts(field: str, buckets: tuple) -> dict[str, Any]:
    """Cumulative bucket counts of a millisecond field, computed by the database in one pass."""
    counts: dict[str, Any] = {
        f"le_{index}": Count("id", filter=Q(**{f"{field}__lte": bound * 1000}))
        for index, bound in enumerate(buckets)
    }
    return {**counts, "count": Count("id"), "sum_ms": Sum(field)}


class DatabaseCollector(Collector):
    """Everything whose truth is in the database (what workers did), read when Prometheus scrapes."""

    def collect(self) -> Iterator[Any]:
        from calls import routing
        from calls.models import JobAttempt, OutboundJob, Recording, RoutingDecision
        from integrations.models import CrmConnection

        now = timezone.now()

        events = event_processing(now)
        processed = CounterMetricFamily(
            f"{PREFIX}events_processed",
            "Call events applied to their calls, by PBX provider.",
            labels=["provider"],
        )
        for provider, count in sorted(events.processed_by_provider.items()):
            processed.add_metric([provider], count)
        yield processed
        yield GaugeMetricFamily(
            f"{PREFIX}events_unprocessed",
            "Stored call events not yet applied to their calls.",
            value=events.waiting,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}event_processing_lag_seconds",
            "Age of the oldest stored call event not yet applied (0 when none waits).",
            value=events.oldest_waiting_seconds,
        )

        jobs = GaugeMetricFamily(
            f"{PREFIX}outbox_jobs", "Outbound jobs by kind and state.", labels=["kind", "state"]
        )
        for row in (
            OutboundJob.objects.values("kind", "status").annotate(n=Count("id")).order_by("kind", "status")
        ):
            jobs.add_metric([row["kind"], row["status"]], row["n"])
        yield jobs
        pending = OutboundJob.objects.filter(status=OutboundJob.PENDING).aggregate(
            oldest=Min("created_at"),
            overdue=Min("next_attempt_at", filter=Q(next_attempt_at__lte=now)),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}outbox_oldest_pending_seconds",
            "Age of the oldest pending outbound job (0 when none is pending).",
            value=(now - pending["oldest"]).total_seconds() if pending["oldest"] else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}outbox_overdue_seconds",
            "How long the most overdue pending job has been due without being sent (relay lag).",
            value=max(0.0, (now - pending["overdue"]).total_seconds()) if pending["overdue"] else 0.0,
        )

        attempts = JobAttempt.objects.filter(job__crm_connection__isnull=False).annotate(
            provider=F("job__crm_connection__provider")
        )
        deliveries = CounterMetricFamily(
            f"{PREFIX}deliveries",
            "Delivery attempts to CRM-side connections by provider and outcome (sent, transient, permanent).",
            labels=["provider", "outcome"],
        )
        for row in (
            attempts.values("provider", "outcome").annotate(n=Count("id")).order_by("provider", "outcome")
        ):
            deliveries.add_metric([row["provider"], row["outcome"]], row["n"])
        yield deliveries
        yield _histogram(
            f"{PREFIX}delivery_duration_seconds",
            "Duration of delivery attempts to CRM-side connections, by provider.",
            ["provider"],
            attempts.values("provider")
            .annotate(**_bucket_counts("duration_ms", DELIVERY_BUCKETS))
            .order_by("provider"),
            DELIVERY_BUCKETS,
        )

        # A CRM answer's source is the connection's key: reported as "crm" with the CRM's provider, so the
        # label set stays small however many tenants there are.
        crm_providers = {
            (tenant_id, key): provider
            for tenant_id, key, provider in CrmConnection.objects.values_list("tenant_id", "key", "provider")
        }
        routed = RoutingDecision.objects.values("tenant_id", "source").annotate(
            **_bucket_counts("latency_ms", ROUTING_BUCKETS)
        )
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for row in routed.order_by():
            provider = crm_providers.get((row["tenant_id"], row["source"]))
            if provider is not None:
                label = ("crm", provider)
            elif row["source"] in RoutingDecision.SOURCES:
                label = (row["source"], "")
            else:
                label = ("crm", "removed")  # the connection that answered no longer exists
            into = merged.setdefault(label, {"source": label[0], "provider": label[1]})
            for name, value in row.items():
                if name.startswith("le_") or name in {"count", "sum_ms"}:
                    into[name] = into.get(name, 0) + (value or 0)
        answers = CounterMetricFamily(
            f"{PREFIX}routing_answers",
            "Routing decisions by source (crm with the CRM's provider, cache, history, none).",
            labels=["source", "provider"],
        )
        for (source, provider), row in sorted(merged.items()):
            answers.add_metric([source, provider], row["count"])
        yield answers
        yield _histogram(
            f"{PREFIX}routing_duration_seconds",
            "Time to answer a routing question, by source.",
            ["source", "provider"],
            [merged[label] for label in sorted(merged)],
            ROUTING_BUCKETS,
        )

        recordings = GaugeMetricFamily(f"{PREFIX}recordings", "Recordings by state.", labels=["state"])
        counts = dict(Recording.objects.values_list("state").annotate(n=Count("id")).order_by())
        for state, _label in Recording.STATES:
            recordings.add_metric([state], counts.get(state, 0))
        yield recordings

        breakers = GaugeMetricFamily(
            f"{PREFIX}routing_breaker_open",
            "Active CRM connections whose routing circuit breaker is open, by provider.",
            labels=["provider"],
        )
        open_by_provider: dict[str, int] = {}
        for crm in CrmConnection.objects.filter(active=True).only("pk", "provider"):
            open_by_provider.setdefault(crm.provider, 0)
            if routing.breaker_open(crm):
                open_by_provider[crm.provider] += 1
        for provider, count in sorted(open_by_provider.items()):
            breakers.add_metric([provider], count)
        yield breakers


class _LocalWebCollector(Collector):
    def collect(self) -> Iterator[Any]:
        yield from WEB_REGISTRY.collect()


def scrape_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        MultiProcessCollector(registry, path=multiprocess_dir())
    else:
        registry.register(_LocalWebCollector())
    registry.register(DatabaseCollector())
    return registry


def _authorised(request: HttpRequest) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and secrets_equal(token.strip(), settings.METRICS_TOKEN)


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    if settings.METRICS_TOKEN:
        if not _authorised(request):
            response = HttpResponse("metrics need Authorization: Bearer <METRICS_TOKEN>\n", status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    elif not settings.DEBUG:
        raise Http404("metrics are off: set METRICS_TOKEN")
    # The client library picks the text format Prometheus asked for in Accept (OpenMetrics or plain text).
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(scrape_registry()), content_type=content_type)
