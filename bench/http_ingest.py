"""Webhook ingest through the production server: signed Rostelecom `call_events` against a bare view, same run.

RELIABILITY.md §6.1 and issue 13: gunicorn exactly as the README starts it (gthread, `-w 2 --threads 8`) on
PostgreSQL, a tenant with a Rostelecom PBX and three CRMs (Planfix, RetailCRM, WireCRM), `wrk -t1 -c8 --latency`
in alternating 10 s rounds: the bare view (bench/urls.py: same server, middleware and POST body), then the
webhook, every request a NEW call (a fresh session_id, signed as the PBX signs). The ratio is
median(webhook req/s) / median(bare req/s). Then an open-loop run at half the measured webhook maximum with this
script's own paced client (latency measured from each request's scheduled send time, so a stall is not hidden
by the client waiting), and a check that the database holds one stored event per 2xx answer.

The inbox processor does not run during the capacity rounds: this measures what the PBX's request costs; the
processing is measured end to end by bench/popup_latency.py.

    python bench/http_ingest.py                       # 3 rounds of 10 s, open loop 30 s
    python bench/http_ingest.py --rounds 5 --seconds 15 --open-loop-seconds 60 --json var/http-ingest.json

Needs `wrk` (Debian/Ubuntu: `apt-get install wrk`), PostgreSQL (BENCH_POSTGRES_URL, default
postgres://postgres@127.0.0.1:5432/postgres: a database `callbridge_bench_http` is dropped and created there)
and Redis for the broker and cache settings (BENCH_BROKER_URL / BENCH_CACHE_URL; the webhook touches neither).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import stack

CLIENT_ID = "000003C405E6525C64C184258C44EC99"
SIGN_KEY = "00000716ABDA6D4DFF10F82BCBBFC532"
TEMPLATE = {
    "session_id": "",
    "timestamp": "2026-12-03 10:10:05.000",
    "type": "incoming",
    "state": "new",
    "from_number": "84951234567",
    "request_number": "74992222222",
    "request_pin": "101",
}

WORLD = """
from integrations.models import CrmConnection, Extension, PbxConnection, Tenant
tenant = Tenant.objects.create(name="Bench", slug="bench", region="RU", time_zone="Europe/Moscow")
for number in ("101", "102", "103"):
    Extension.objects.create(tenant=tenant, number=number)
pbx = PbxConnection.objects.create(
    tenant=tenant, key="pbx", provider="rostelecom", settings={"domain": "bench.rt.ru"},
    secrets={"client_id": %(client_id)r, "sign_key": %(sign_key)r},
)
CrmConnection.objects.create(tenant=tenant, key="planfix", provider="planfix",
    settings={"api_url": "http://127.0.0.1:9/tel/api"}, secrets={"planfix_token": "t", "portal_token": "p"})
CrmConnection.objects.create(tenant=tenant, key="retailcrm", provider="retailcrm",
    settings={"url": "http://127.0.0.1:9", "client_id": "bench"}, secrets={"api_key": "k"})
CrmConnection.objects.create(tenant=tenant, key="wirecrm", provider="wirecrm",
    settings={"url": "http://127.0.0.1:9/api"}, secrets={"token": "t"})
print(pbx.public_id)
"""

LUA = """
local path = "%(path)s"
local client_id = "%(client_id)s"
local bodies, signs, n, i = {}, {}, 0, 0
function init(args)
  for line in io.lines(args[1]) do
    local tab = line:find("\\t", 1, true)
    n = n + 1
    signs[n] = line:sub(1, tab - 1)
    bodies[n] = line:sub(tab + 1)
  end
end
function request()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format("POST", path, {["Content-Type"] = "application/json", ["X-Client-ID"] = client_id,
    ["X-Client-Sign"] = signs[i]}, bodies[i])
end
"""


def signed(session_id: str) -> tuple[str, bytes]:
    body = json.dumps({**TEMPLATE, "session_id": session_id}, separators=(",", ":")).encode()
    return hashlib.sha256(CLIENT_ID.encode() + body + SIGN_KEY.encode()).hexdigest(), body


def write_bodies(path: Path, prefix: str, count: int) -> None:
    with path.open("w") as out:
        for n in range(count):
            sign, body = signed(f"{prefix}-{n}")
            out.write(f"{sign}\t{body.decode()}\n")


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * UNITS[unit]


def run_wrk(url: str, script: Path, data: Path, seconds: int, connections: int) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url, "--"]
    output = subprocess.run([*command, str(data)], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.MULTILINE))
    return {
        "rps": rps,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
    }


# ---------------------------------------------------------------------------------------------------------
# Open loop: requests sent on a fixed schedule over keep-alive connections
# ---------------------------------------------------------------------------------------------------------


async def _send(reader: Any, writer: Any, path: str, body: bytes, sign: str) -> int:
    """POST a Rostelecom webhook as the PBX signs it; the answer's status."""
    headers = {"Content-Type": "application/json", "X-Client-ID": CLIENT_ID, "X-Client-Sign": sign}
    return await post(reader, writer, path, body, headers)


async def post(reader: Any, writer: Any, path: str, body: bytes, headers: dict[str, str]) -> int:
    """One POST on a kept-alive connection; reads the whole answer and returns its status."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}Content-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:  # the server closed an idle keep-alive connection
        raise ConnectionResetError("connection closed before the answer")
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def open_loop(
    port: int, path: str, rate: float, seconds: float, timeout: float = 2.0
) -> dict[str, Any]:
    idle: list[tuple[Any, Any]] = []
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    total = int(rate * seconds)

    async def one(n: int, scheduled: float) -> None:
        sign, body = signed(f"open-{int(start)}-{n}")
        connection = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
        try:
            remaining = timeout - (loop.time() - scheduled)
            try:
                status = await asyncio.wait_for(_send(*connection, path, body, sign), remaining)
            except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
                # A reused connection the server had closed while idle: a real client reconnects and resends.
                connection[1].close()
                connection = await asyncio.open_connection("127.0.0.1", port)
                remaining = timeout - (loop.time() - scheduled)
                status = await asyncio.wait_for(_send(*connection, path, body, sign), remaining)
            idle.append(connection)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            latencies.append(loop.time() - scheduled)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            connection[1].close()
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
            latencies.append(timeout)  # a timeout counts, at the timeout (RELIABILITY §3.4)

    tasks = []
    for n in range(total):
        scheduled = start + n / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, scheduled)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    latencies.sort()
    return {
        "rate": round(rate, 1),
        "seconds": seconds,
        "requests": total,
        "statuses": statuses,
        "p50_ms": round(stack.percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(stack.percentile(latencies, 0.99) * 1000, 1),
        "p999_ms": round(stack.percentile(latencies, 0.999) * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
    }


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--open-loop-seconds", type=float, default=30)
    parser.add_argument("--bodies", type=int, default=30000, help="distinct new calls per webhook round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk (Debian/Ubuntu)", file=sys.stderr)
        return 2

    run = stack.run_directory("http-ingest")
    database = stack.fresh_database("callbridge_bench_http")
    env = stack.environment(database, run, PROMETHEUS_MULTIPROC_DIR=str(run / "prometheus"))
    (run / "prometheus").mkdir()
    stack.manage(env, "migrate", "--noinput")
    public_id = stack.run_python(env, WORLD % {"client_id": CLIENT_ID, "sign_key": SIGN_KEY}).strip()
    hook = f"/hooks/rostelecom/{public_id}/call_events"
    scripts = {}
    for name, path in (("bare", "/bench/bare"), ("ingest", hook)):
        scripts[name] = run / f"{name}.lua"
        scripts[name].write_text(LUA % {"path": path, "client_id": CLIENT_ID})

    processes = stack.Processes(run)
    port = stack.free_port()
    results: dict[str, list[dict[str, float]]] = {"bare": [], "ingest": []}
    try:
        base = stack.start_gunicorn(processes, env, port)
        warm = run / "warm.txt"
        write_bodies(warm, "warm", 5000)
        for name in ("bare", "ingest"):
            run_wrk(
                base + ("/bench/bare" if name == "bare" else hook), scripts[name], warm, 3, args.connections
            )
        for number in range(args.rounds):
            for name in ("bare", "ingest"):
                data = run / f"{name}-{number}.txt"
                write_bodies(data, f"r{number}", args.bodies if name == "ingest" else 100)
                url = base + ("/bench/bare" if name == "bare" else hook)
                result = run_wrk(url, scripts[name], data, args.seconds, args.connections)
                if name == "ingest" and result["requests"] > args.bodies:
                    result["wrapped"] = True  # some requests repeated a call: raise --bodies
                results[name].append(result)
                print(f"round {number + 1} {name:6}: " + stack.describe(result), flush=True)
        bare = statistics.median(r["rps"] for r in results["bare"])
        ingest = statistics.median(r["rps"] for r in results["ingest"])
        ratio = ingest / bare
        bare_spread = (max(r["rps"] for r in results["bare"]) - min(r["rps"] for r in results["bare"])) / bare
        open_result = asyncio.run(open_loop(port, hook, ingest / 2, args.open_loop_seconds))
        stored = stack.run_python(
            env,
            "from calls.models import CallEvent, Call\n"
            "print(CallEvent.objects.count(), Call.objects.count())",
        ).split()
    finally:
        processes.stop_all()

    answered = sum(r["requests"] - r["non_2xx"] for r in results["ingest"]) + sum(
        v for k, v in open_result["statuses"].items() if k.startswith("2")
    )
    summary = {
        "bare_rps_median": round(bare, 1),
        "ingest_rps_median": round(ingest, 1),
        "ratio": round(ratio, 3),
        "ingest_p50_ms": statistics.median(r["p50_ms"] for r in results["ingest"]),
        "ingest_p99_ms": statistics.median(r["p99_ms"] for r in results["ingest"]),
        "bare_spread": round(bare_spread, 3),
        "open_loop": open_result,
        "events_stored": int(stored[0]),
        "calls_created_by_webhooks": int(stored[1]),
        "webhooks_answered_2xx_after_warm_up": answered,
        "loadavg": stack.loadavg(),
    }
    print(json.dumps(summary, indent=2))
    if bare_spread > 0.10:
        print("warning: the bare view varied by more than 10 % between rounds (a busy machine): rerun")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rounds": results, "summary": summary}, indent=2))
    shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
