"""Pop-up latency through the whole stack: from the PBX's POST to the CRM receiving its pop-up.

Issue 13's goal: p95 ≤ 1.0 s at 5 new calls per second. The stack runs as in production (docs/operations.md):
gunicorn as the README starts it, the inbox processor (`manage.py process_inbox`), a Celery worker
(`celery -A portal worker`, prefork), Celery beat, PostgreSQL and Redis. One tenant has a Rostelecom PBX and
three CRMs, all pointed at one fake CRM on loopback (a threaded HTTP server in this process that records when
each request arrives): Planfix (INCOMING), RetailCRM (`telephony/call/event`) and WireCRM (NOTIFY_INTERNAL,
which WireCRM only takes after the call's NOTIFY_START).

The PBX side is an open-loop client: call n's signed `call_events` "new" is POSTed at start + n / rate, and the
latency is measured from that scheduled moment to the fake CRM's receipt of the pop-up (per CRM), so a slow
answer is not hidden by the client waiting for it. A pop-up that never arrives within --wait counts as a miss.

    python bench/popup_latency.py                      # 200 calls at 5 calls/s
    python bench/popup_latency.py --calls 100 --rate 10 --json var/popup.json

Needs PostgreSQL (BENCH_POSTGRES_URL; database `callbridge_bench_popup` is dropped and created) and Redis
(BENCH_BROKER_URL / BENCH_CACHE_URL, by default databases 13 and 14 of 127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import stack
from bench.http_ingest import CLIENT_ID, SIGN_KEY, TEMPLATE, post

WORLD = """
from integrations.models import CrmConnection, Extension, PbxConnection, Tenant
tenant = Tenant.objects.create(name="Bench", slug="bench", region="RU", time_zone="Europe/Moscow")
for number in ("101", "102", "103"):
    Extension.objects.create(tenant=tenant, number=number)
pbx = PbxConnection.objects.create(
    tenant=tenant, key="pbx", provider="rostelecom",
    settings={"domain": "bench.rt.ru", "api_url": "%(crm)s/rostelecom"},
    secrets={"client_id": %(client_id)r, "sign_key": %(sign_key)r},
)
CrmConnection.objects.create(tenant=tenant, key="planfix", provider="planfix",
    settings={"api_url": "%(crm)s/planfix"}, secrets={"planfix_token": "planfix-token", "pbx_token": "p" * 32})
CrmConnection.objects.create(tenant=tenant, key="retailcrm", provider="retailcrm",
    settings={"account_url": "%(crm)s/retailcrm"}, secrets={"api_key": "retail-key", "client_id": "c" * 32})
CrmConnection.objects.create(tenant=tenant, key="wirecrm", provider="wirecrm",
    settings={}, secrets={"webhook_url": "%(crm)s/wirecrm", "pbx_token": "w" * 32})
print(pbx.public_id)
"""


POPUPS = {"planfix": "INCOMING", "retailcrm": "call/event", "wirecrm": "NOTIFY_INTERNAL"}
PHONE = re.compile(r"916(\d{7})")


class FakeCrm:
    """Answers every POST with 200 {"success": true} and records (CRM, call number, kind, arrival)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.popups: dict[tuple[str, int], float] = {}
        self.requests = 0

    def handler(self) -> type[stack.JsonHandler]:
        fake = self

        class Handler(stack.JsonHandler):
            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = self.read_body()
                text = self.path + " " + unquote_plus(body.decode("utf-8", errors="replace"))
                crm = self.path.strip("/").split("/")[0]
                marker = POPUPS.get(crm)
                number = PHONE.search(text)
                if marker and marker in text and number:
                    with fake.lock:
                        fake.popups.setdefault((crm, int(number.group(1))), arrived)
                with fake.lock:
                    fake.requests += 1
                self.answer(200, {"success": True})

        return Handler


def signed_new_call(number: int) -> tuple[bytes, dict[str, str]]:
    """Call n's Rostelecom `call_events` "new", signed as the PBX signs it: body and headers."""
    import hashlib

    body = json.dumps(
        {**TEMPLATE, "session_id": f"popup-{number}", "from_number": f"8916{number:07d}"},
        separators=(",", ":"),
    ).encode()
    sign = hashlib.sha256(CLIENT_ID.encode() + body + SIGN_KEY.encode()).hexdigest()
    return body, {"Content-Type": "application/json", "X-Client-ID": CLIENT_ID, "X-Client-Sign": sign}


async def play_calls(
    port: int, request: Callable[[int], tuple[str, bytes, dict[str, str]]], calls: int, rate: float
) -> tuple[dict[int, float], dict[str, int]]:
    """POST call n's first webhook, `request(n)` → (path, body, headers), at start + n / rate; returns the
    scheduled moments (time.monotonic) and the answers' statuses."""
    loop = asyncio.get_running_loop()
    offset = time.monotonic() - loop.time()
    start = loop.time() + 0.5
    idle: list[Any] = []
    scheduled: dict[int, float] = {}
    statuses: dict[str, int] = {}

    async def one(number: int, at: float) -> None:
        path, body, headers = request(number)
        connection = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
        try:
            status = await asyncio.wait_for(post(*connection, path, body, headers), 5)
            idle.append(connection)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            connection[1].close()
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1

    tasks = []
    for number in range(calls):
        at = start + number / rate
        scheduled[number] = at + offset
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(number, at)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return scheduled, statuses


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rate", type=float, default=5.0, help="new calls per second")
    parser.add_argument("--wait", type=float, default=20.0, help="seconds to wait for the last pop-ups")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    args = parser.parse_args()

    fake = FakeCrm()
    server, crm_url = stack.serve(fake.handler())

    run = stack.run_directory("popup")
    database = stack.fresh_database("callbridge_bench_popup")
    env = stack.environment(database, run, PROMETHEUS_MULTIPROC_DIR=str(run / "prometheus"))
    (run / "prometheus").mkdir()
    stack.manage(env, "migrate", "--noinput")
    world = WORLD % {"client_id": CLIENT_ID, "sign_key": SIGN_KEY, "crm": crm_url}
    public_id = stack.run_python(env, world).strip()
    hook = f"/hooks/rostelecom/{public_id}/call_events"

    processes = stack.Processes(run)
    try:
        port = stack.start_production(processes, env, run)
        print(f"Playing {args.calls} new calls at {args.rate}/s…", flush=True)
        scheduled, statuses = asyncio.run(
            play_calls(port, lambda n: (hook, *signed_new_call(n)), args.calls, args.rate)
        )
        deadline = time.monotonic() + args.wait
        expected = args.calls * len(POPUPS)
        while time.monotonic() < deadline and len(fake.popups) < expected:
            time.sleep(0.25)
        stats = stack.run_python(env, stack.STAGES)
    finally:
        processes.stop_all()
        server.shutdown()

    summary: dict[str, Any] = {"calls": args.calls, "rate": args.rate, "webhook_statuses": statuses}
    everything: list[float] = []
    for crm in POPUPS:
        latencies = sorted(
            fake.popups[(crm, n)] - scheduled[n] for n in range(args.calls) if (crm, n) in fake.popups
        )
        everything += latencies
        summary[crm] = {
            "received": len(latencies),
            "missed": args.calls - len(latencies),
            "p50_s": round(stack.percentile(latencies, 0.50), 3),
            "p95_s": round(stack.percentile(latencies, 0.95), 3),
            "p99_s": round(stack.percentile(latencies, 0.99), 3),
            "max_s": round(latencies[-1], 3) if latencies else None,
        }
    everything.sort()
    missed = expected - len(everything)
    # A missing pop-up counts as the slowest possible one.
    padded = everything + [float("inf")] * missed
    summary["all"] = {
        "received": len(everything),
        "missed": missed,
        "p50_s": round(stack.percentile(padded, 0.50), 3),
        "p95_s": round(stack.percentile(padded, 0.95), 3),
        "p99_s": round(stack.percentile(padded, 0.99), 3),
    }
    summary["database"] = json.loads(stats)
    summary["loadavg"] = stack.loadavg()
    stack.report(summary, args.json, run, keep=args.keep)
    return 0 if missed == 0 and summary["all"]["p95_s"] <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
