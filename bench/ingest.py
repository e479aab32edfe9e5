"""Webhook ingest capacity, as a ratio to a bare Django view measured in the same run.

Absolute requests per second depend on the machine; the ratio ingest / bare does much less (RELIABILITY.md §0
item 10, §6.1), so that is the figure to compare between runs. Both endpoints are driven in-process through
Django's test Client (same middleware, no network, no server), in interleaved rounds so a noisy neighbour hits
both alike. The ingest endpoint is the real /hooks/<provider>/<public_id>/<action> view with the test fake PBX
(token auth, JSON body, one new incoming call per request: Call + CallEvent + one CRM pop-up job, one
transaction, no broker).

    python bench/ingest.py                      # 2000 requests per endpoint and round, 3 rounds
    python bench/ingest.py --requests 500 --rounds 5 --json var/bench-ingest.json

A temporary SQLite database is created and removed; set DATABASE_URL to measure PostgreSQL instead (a tenant
named bench-<pid>-<time> is created in it and left there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# A throwaway directory for the SQLite database, the cache table and the broker folders.
_OWN_VAR_DIR = "CALLBRIDGE_VAR_DIR" not in os.environ
if _OWN_VAR_DIR:
    os.environ["CALLBRIDGE_VAR_DIR"] = tempfile.mkdtemp(prefix="callbridge-bench-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# A developer's .env may point at a real database: only the environment decides here.
os.environ.setdefault("CALLBRIDGE_READ_DOTENV", "0")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()  # before the URL patterns below import the project's

from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import include, path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

PBX_TOKEN = "bench-pbx-token-0123456789"


@csrf_exempt
def bare_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


# The project's URLs plus the bare view, so both go through the same resolver and middleware.
urlpatterns = [
    path("bench/bare", bare_view),
    path("", include("portal.urls")),
]


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def drive(client: Any, url: str, bodies: list[bytes], headers: dict[str, str]) -> dict[str, float]:
    """POST every body once, one after the other; requests per second and latency percentiles."""
    latencies = []
    started = time.perf_counter()
    for body in bodies:
        t0 = time.perf_counter()
        response = client.post(url, data=body, content_type="application/json", headers=headers)
        latencies.append(time.perf_counter() - t0)
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}: {response.content[:200]!r}")
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(bodies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def webhook_bodies(prefix: str, count: int) -> list[bytes]:
    """One new incoming call ringing extension 101 per webhook."""
    return [
        json.dumps(
            {"events": [{"call": f"{prefix}-{n}", "kind": "ringing", "seq": 1, "ext": "101"}]}
        ).encode()
        for n in range(count)
    ]


def setup_world() -> Any:
    from django.core.management import call_command

    from integrations.models import CrmConnection, Extension, PbxConnection, Tenant
    from integrations.providers import base

    # The test fakes stand in for a real PBX and CRM (registered as tests/pipeline/conftest.py does).
    base.REGISTRY.update(
        fakepbx="tests.pipeline.fake_providers.FakePbx", fakecrm="tests.pipeline.fake_providers.FakeCrm"
    )
    base.SIDES.update(fakepbx=base.PBX, fakecrm=base.CRM)
    base.LABELS.update(fakepbx="Fake PBX", fakecrm="Fake CRM")

    call_command("migrate", verbosity=0, interactive=False)
    call_command("createcachetable", verbosity=0)
    slug = f"bench-{os.getpid()}-{int(time.time())}"
    tenant = Tenant.objects.create(name=slug, slug=slug)
    for number in ("101", "102", "103"):
        Extension.objects.create(tenant=tenant, number=number)
    pbx = PbxConnection.objects.create(
        tenant=tenant, key="pbx", provider="fakepbx", settings={}, secrets={"token": PBX_TOKEN}
    )
    CrmConnection.objects.create(
        tenant=tenant, key="crm", provider="fakecrm", settings={}, secrets={"token": "crm-token"}
    )
    return pbx


def row_counts(pbx: Any) -> dict[str, int]:
    from calls.models import Call, CallEvent, OutboundJob

    return {
        "calls": Call.objects.filter(pbx_connection=pbx).count(),
        "events": CallEvent.objects.filter(pbx_connection=pbx).count(),
        "jobs": OutboundJob.objects.filter(tenant_id=pbx.tenant_id).count(),
    }


def process_backlog(pbx: Any) -> dict[str, Any]:
    """Apply every stored event (one new call each) as `manage.py process_inbox` does, counting statements."""
    from django.db import connection

    from calls import processor

    statements = [0]

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements[0] += 1
        return execute(sql, params, many, context)

    from calls.models import CallEvent

    events = CallEvent.objects.filter(pbx_connection=pbx, status=CallEvent.PENDING).count()
    before = row_counts(pbx)
    started = time.perf_counter()
    with connection.execute_wrapper(count):
        processor.drain()
    seconds = time.perf_counter() - started
    after = row_counts(pbx)
    return {
        "events": events,
        "seconds": seconds,
        "events_per_second": events / seconds if seconds else 0.0,
        "statements_per_event": statements[0] / max(events, 1),
        "rows": {k: after[k] - before[k] for k in after},
    }


def summary(rounds: list[dict[str, float]]) -> str:
    rps = ", ".join(f"{r['rps']:.0f}" for r in rounds)
    p50 = statistics.median(r["p50_ms"] for r in rounds)
    p99 = max(r["p99_ms"] for r in rounds)
    return f"{statistics.median(r['rps'] for r in rounds):7.0f} req/s (rounds {rps}); p50 {p50:.2f} ms, p99 {p99:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per endpoint and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    from django.conf import settings
    from django.db import connection
    from django.test import Client

    settings.ROOT_URLCONF = __name__
    pbx = setup_world()
    # Production runs without DEBUG; DEBUG's per-query bookkeeping would tax the ingest side only.
    settings.DEBUG = False

    client = Client()
    bare_url = "/bench/bare"
    hook_url = f"/hooks/fakepbx/{pbx.public_id}/events"
    auth = {"X-Token": PBX_TOKEN}
    drive(client, bare_url, webhook_bodies("warm", args.warmup), {})
    drive(client, hook_url, webhook_bodies("warm", args.warmup), auth)

    bare: list[dict[str, float]] = []
    ingest: list[dict[str, float]] = []
    written: list[dict[str, int]] = []
    first_round_bodies: list[bytes] = []
    for n in range(args.rounds):
        bodies = webhook_bodies(f"r{n}", args.requests)
        first_round_bodies = first_round_bodies or bodies
        bare.append(drive(client, bare_url, bodies, {}))
        before = row_counts(pbx)
        ingest.append(drive(client, hook_url, bodies, auth))
        after = row_counts(pbx)
        written.append({k: after[k] - before[k] for k in after})

    # Every webhook of round 1 again, as a PBX retrying: answered 200, nothing new stored.
    before = row_counts(pbx)
    replay = drive(client, hook_url, first_round_bodies, auth)
    after = row_counts(pbx)
    replay_written = {k: after[k] - before[k] for k in after}

    ratio = statistics.median(r["rps"] for r in ingest) / statistics.median(r["rps"] for r in bare)
    replay_ratio = replay["rps"] / statistics.median(r["rps"] for r in bare)
    print(
        f"Callbridge ingest benchmark: {args.rounds} rounds x {args.requests} requests, in-process test Client\n"
        f"python {platform.python_version()}, django {django.get_version()}, "
        f"db {connection.vendor}, {os.cpu_count()} CPUs, {platform.machine()}\n"
    )
    print(f"bare view   {summary(bare)}")
    print(f"ingest      {summary(ingest)}")
    per_round = ", ".join(f"{i['rps'] / b['rps']:.3f}" for b, i in zip(bare, ingest, strict=True))
    print(f"ratio ingest/bare (median of rounds): {ratio:.3f} (per round {per_round})")
    bare_rps = [r["rps"] for r in bare]
    spread = (max(bare_rps) - min(bare_rps)) / statistics.median(bare_rps)
    if spread > 0.10:  # RELIABILITY.md §6.1: a noisy neighbour; discard and rerun once
        print(f"WARNING: the bare view varied by {spread:.0%} between rounds: the machine is busy, rerun")
    for n, rows in enumerate(written, start=1):
        # The webhook stores the event only; the inbox processor creates the call and the pop-up job (below).
        ok = "ok" if rows == {"calls": 0, "events": args.requests, "jobs": 0} else "!!"
        print(
            f"round {n}: rows written calls +{rows['calls']}, events +{rows['events']}, jobs +{rows['jobs']} {ok}"
        )
    unchanged = "rows unchanged" if not any(replay_written.values()) else f"ROWS WRITTEN {replay_written}"
    print(
        f"duplicate replay ({args.requests} webhooks sent a second time): {replay['rps']:.0f} req/s "
        f"(ratio {replay_ratio:.3f}), p50 {replay['p50_ms']:.2f} ms, p99 {replay['p99_ms']:.2f} ms, {unchanged}"
    )
    processing = process_backlog(pbx)
    print(
        f"inbox processor: {processing['events']} events applied in {processing['seconds']:.2f} s "
        f"({processing['events_per_second']:.0f}/s), {processing['statements_per_event']:.1f} SQL statements "
        f"per event; calls +{processing['rows']['calls']}, jobs +{processing['rows']['jobs']}"
    )

    if args.json:
        figures = {
            "requests": args.requests,
            "rounds": args.rounds,
            "db": connection.vendor,
            "cpus": os.cpu_count(),
            "bare": bare,
            "ingest": ingest,
            "ratio": ratio,
            "bare_spread": spread,
            "rows_written": written,
            "replay": {**replay, "ratio": replay_ratio, "rows_written": replay_written},
            "processing": processing,
        }
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        if _OWN_VAR_DIR:
            shutil.rmtree(os.environ["CALLBRIDGE_VAR_DIR"], ignore_errors=True)
