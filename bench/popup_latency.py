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
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import stack
from bench.http_ingest import CLIENT_ID, SIGN_KEY, TEMPLATE, _send

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

# Where the time goes, from the database's own timestamps: webhook stored → job written by the processor →
# the job's attempt started in a Celery worker → attempt done (per kind, p50 / p95 in seconds).
STAGES = """
import json
from django.db.models import Count
from calls.models import CallEvent, JobAttempt, OutboundJob

def pct(values, q):
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else None

received = {e.call_id: e.received_at for e in CallEvent.objects.all()}
stages = {}
for attempt in JobAttempt.objects.select_related("job"):
    job = attempt.job
    if job.call_id not in received:
        continue
    row = stages.setdefault(job.kind, {"processed": [], "picked_up": [], "sent": []})
    row["processed"].append((job.created_at - received[job.call_id]).total_seconds())
    row["picked_up"].append((attempt.started_at - job.created_at).total_seconds())
    row["sent"].append(attempt.duration_ms / 1000)
print(json.dumps({
    "events": dict(CallEvent.objects.values_list("status").annotate(n=Count("id"))),
    "jobs": {f"{k}/{s}": n for k, s, n in OutboundJob.objects.values_list("kind", "status").annotate(n=Count("id"))},
    "stages_p50_p95": {
        kind: {name: [pct(v, 0.5), pct(v, 0.95)] for name, v in row.items()} for kind, row in stages.items()
    },
}))
"""

WORKER_OPTIONS: list[str] = []  # the production command: prefork, one process per core
POPUPS = {"planfix": "INCOMING", "retailcrm": "call/event", "wirecrm": "NOTIFY_INTERNAL"}
PHONE = re.compile(r"916(\d{7})")


class FakeCrm:
    """Answers every POST with 200 {"success": true} and records (CRM, call number, kind, arrival)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.popups: dict[tuple[str, int], float] = {}
        self.requests = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                text = self.path + " " + unquote_plus(body.decode("utf-8", errors="replace"))
                crm = self.path.strip("/").split("/")[0]
                marker = POPUPS.get(crm)
                number = PHONE.search(text)
                if marker and marker in text and number:
                    with fake.lock:
                        fake.popups.setdefault((crm, int(number.group(1))), arrived)
                with fake.lock:
                    fake.requests += 1
                data = b'{"success": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def signed_new_call(number: int) -> tuple[str, bytes]:
    import hashlib

    body = json.dumps(
        {**TEMPLATE, "session_id": f"popup-{number}", "from_number": f"8916{number:07d}"},
        separators=(",", ":"),
    ).encode()
    return hashlib.sha256(CLIENT_ID.encode() + body + SIGN_KEY.encode()).hexdigest(), body


async def play_calls(
    port: int, path: str, calls: int, rate: float
) -> tuple[dict[int, float], dict[str, int]]:
    """POST call n's "new" at start + n / rate; returns the scheduled moments (time.monotonic) and statuses."""
    loop = asyncio.get_running_loop()
    offset = time.monotonic() - loop.time()
    start = loop.time() + 0.5
    idle: list[Any] = []
    scheduled: dict[int, float] = {}
    statuses: dict[str, int] = {}

    async def one(number: int, at: float) -> None:
        sign, body = signed_new_call(number)
        connection = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
        try:
            status = await asyncio.wait_for(_send(*connection, path, body, sign), 5)
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
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    crm_url = f"http://127.0.0.1:{server.server_address[1]}"

    run = stack.run_directory("popup")
    database = stack.fresh_database("callbridge_bench_popup")
    env = stack.environment(database, run, PROMETHEUS_MULTIPROC_DIR=str(run / "prometheus"))
    (run / "prometheus").mkdir()
    stack.manage(env, "migrate", "--noinput")
    world = WORLD % {"client_id": CLIENT_ID, "sign_key": SIGN_KEY, "crm": crm_url}
    public_id = stack.run_python(env, world).strip()
    hook = f"/hooks/rostelecom/{public_id}/call_events"

    processes = stack.Processes(run)
    port = stack.free_port()
    try:
        stack.start_gunicorn(processes, env, port)
        processes.start("inbox", ["manage.py", "process_inbox"], env)
        processes.start(
            "worker", ["-m", "celery", "-A", "portal", "worker", "-l", "warning", *WORKER_OPTIONS], env
        )
        processes.start(
            "beat", ["-m", "celery", "-A", "portal", "beat", "-l", "warning", "-s", str(run / "beat")], env
        )
        time.sleep(5)  # the worker's pool and beat's first tick
        print(f"Playing {args.calls} new calls at {args.rate}/s…", flush=True)
        scheduled, statuses = asyncio.run(play_calls(port, hook, args.calls, args.rate))
        deadline = time.monotonic() + args.wait
        expected = args.calls * len(POPUPS)
        while time.monotonic() < deadline and len(fake.popups) < expected:
            time.sleep(0.25)
        stats = stack.run_python(env, STAGES)
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
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    if args.keep:
        print(f"logs kept in {run}")
    else:
        shutil.rmtree(run, ignore_errors=True)
    return 0 if missed == 0 and summary["all"]["p95_s"] <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
