"""Server time of the tenant dashboard (the admin index) for one tenant with 100,000 calls over 90 days, showing
the last 30 days. Goal: ≤ 300 ms on PostgreSQL (issue 17).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/callbridge_bench python bench/dashboard.py
    python bench/dashboard.py --calls 20000 --rounds 5      # smaller, and SQLite when DATABASE_URL is unset

The database is migrated, filled once (a tenant named bench-dashboard, reused by later runs with the same
--calls), and measured: the figures alone (calls.dashboard.tenant_dashboard) and the whole admin index page
rendered for a tenant admin through Django's test Client. Prints the median and the worst of --rounds runs.
A PostgreSQL database named in DATABASE_URL is created when missing. The machine is shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if "CALLBRIDGE_VAR_DIR" not in os.environ:
    os.environ["CALLBRIDGE_VAR_DIR"] = tempfile.mkdtemp(prefix="callbridge-bench-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("CALLBRIDGE_READ_DOTENV", "0")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def ensure_postgres_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


if os.environ.get("DATABASE_URL", "").startswith("postgres"):
    ensure_postgres_database(os.environ["DATABASE_URL"])

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

SLUG = "bench-dashboard"
RESULTS = ["answered"] * 6 + ["missed"] * 2 + ["busy", "no_answer", "cancelled"]


def fill(calls: int) -> object:
    from calls.models import Call, OutboundJob, Recording, RoutingDecision
    from integrations.models import CrmConnection, PbxConnection, Tenant

    tenant = Tenant.objects.filter(slug=SLUG).first()
    if tenant is not None and Call.objects.filter(tenant=tenant).count() == calls:
        return tenant
    if tenant is not None:
        Call.objects.filter(tenant=tenant).delete()
        tenant.delete()
    tenant = Tenant.objects.create(slug=SLUG, name="Bench dashboard", time_zone="Europe/Moscow")
    pbx = PbxConnection.objects.create(
        tenant=tenant, key="pbx", provider="rostelecom", settings={"domain": "bench.rt.ru"}
    )
    crms = [
        CrmConnection.objects.create(
            tenant=tenant, key=f"crm{n}", provider="planfix", priority=n, settings={}
        )
        for n in range(3)
    ]
    rng = random.Random(17)
    now = timezone.now()
    batch: list[Call] = []
    started = time.perf_counter()
    for n in range(calls):
        when = now - dt.timedelta(seconds=rng.randrange(90 * 86400))
        result = rng.choice(RESULTS)
        answered = result == "answered"
        batch.append(
            Call(
                tenant=tenant,
                pbx_connection=pbx,
                provider_call_id=f"bench-{n}",
                direction=rng.choice(["in", "in", "in", "out"]),
                client_phone=f"+7916{rng.randrange(10**7):07d}",
                started_at=when,
                ended_at=when + dt.timedelta(seconds=rng.randrange(20, 600)),
                ended=True,
                result=result,
                wait_seconds=rng.randrange(0, 60),
                talk_seconds=rng.randrange(10, 600) if answered else 0,
            )
        )
        if len(batch) == 5000:
            Call.objects.bulk_create(batch)
            batch = []
    Call.objects.bulk_create(batch)
    recent = list(
        Call.objects.filter(tenant=tenant).order_by("-started_at").values_list("pk", "started_at")[:20000]
    )
    jobs, decisions, recordings = [], [], []
    for index, (call_id, when) in enumerate(recent):
        crm = crms[index % 3]
        status = "sent" if index % 50 else rng.choice(["pending", "failed", "dead"])
        jobs.append(
            OutboundJob(
                tenant=tenant,
                crm_connection=crm,
                connection_ref=f"crm:{crm.pk}",
                call_id=call_id,
                kind="event",
                dedupe_key=f"bench-{call_id}",
                status=status,
                attempts=rng.randrange(0, 4),
                created_at=when,
            )
        )
        decisions.append(
            RoutingDecision(
                tenant=tenant,
                call_id=call_id,
                caller="+79160000000",
                source=crm.key if index % 4 else "history",
                extension="101" if index % 3 else "",
                latency_ms=rng.randrange(20, 900),
                created_at=when,
            )
        )
        if index % 10 == 0:
            recordings.append(Recording(call_id=call_id, state="stored" if index % 100 else "expected"))
    OutboundJob.objects.bulk_create(jobs, batch_size=5000)
    RoutingDecision.objects.bulk_create(decisions, batch_size=5000)
    Recording.objects.bulk_create(recordings, batch_size=5000)
    print(
        f"filled {calls} calls, {len(jobs)} jobs, {len(decisions)} routing decisions in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return tenant


def measure(label: str, run, rounds: int) -> None:
    run()  # warm-up: connection, caches, template loading
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    print(f"{label}: median {statistics.median(times):.0f} ms, worst {max(times):.0f} ms ({rounds} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)
    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}")
    tenant = fill(args.calls)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

    from django.contrib.auth import get_user_model

    from calls.dashboard import tenant_dashboard
    from integrations.models import TenantMembership

    user, _created = get_user_model().objects.get_or_create(username="bench-dashboard-admin", is_staff=True)
    TenantMembership.objects.get_or_create(tenant=tenant, user=user, defaults={"role": "admin"})
    client = Client()
    client.force_login(user)

    measure("figures (calls.dashboard)", lambda: tenant_dashboard(tenant), args.rounds)

    def page() -> None:
        response = client.get("/admin/")
        assert response.status_code == 200, response.status_code

    measure("admin index page (figures + rendering)", page, args.rounds)
    print("goal: ≤ 300 ms on PostgreSQL for 100,000 calls over 90 days (the machine is shared: noisy)")


if __name__ == "__main__":
    main()
