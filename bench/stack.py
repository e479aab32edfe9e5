"""Pieces the server benchmarks share: a fresh PostgreSQL database, the production processes (gunicorn as the
README starts it, the inbox processor, a Celery worker, beat), started and stopped by PID.

Each process logs to a file in the run's directory (a pipe nobody reads would fill up and stall it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# The README's web command (docs/operations.md), bound to loopback.
GUNICORN = ["-m", "gunicorn", "portal.wsgi", "-k", "gthread", "--threads", "8", "-w", "2"]
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_database(name: str, server_url: str = "") -> str:
    """Drop and create database `name` on the server of `server_url` (or DATABASE_URL); its URL."""
    import psycopg

    parts = urlsplit(server_url or os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES))
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def environment(database_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    """Production-like: DEBUG off, Redis broker and cache (shared Redis: the benchmarks only add keys)."""
    from portal import development_keys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CALLBRIDGE_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings_bench",
        CALLBRIDGE_READ_DOTENV="0",
        CALLBRIDGE_VAR_DIR=str(var_dir),
        DEBUG="0",
        SECRET_KEY=development_keys.SECRET_KEY,
        FIELD_ENCRYPTION_KEYS=development_keys.FIELD_ENCRYPTION_KEY,
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13"),
        CACHE_URL=os.environ.get("BENCH_CACHE_URL", "redis://127.0.0.1:6379/14"),
        LOG_LEVEL="WARNING",
        OUTBOUND_ALLOW_PRIVATE_NETWORKS="true",  # the fake CRM listens on loopback
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return result.stdout


def run_python(env: dict[str, str], code: str) -> str:
    """Run `code` after django.setup() in the benchmark's environment; its stdout."""
    script = "import django\ndjango.setup()\n" + code
    result = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return result.stdout


class Processes:
    """Named processes in sessions of their own, stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the process's life
        process = subprocess.Popen(
            [PYTHON, *command],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running[name] = process
        return process

    def sessions(self) -> dict[str, int]:
        """Name → session id of each running process (its PID: each starts a session of its own)."""
        return {name: process.pid for name, process in self.running.items() if process.poll() is None}

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str) -> None:
        process = self.running.pop(name, None)
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


def start_gunicorn(processes: Processes, env: dict[str, str], port: int, workers: int = 2) -> str:
    command = [*GUNICORN[:-1], str(workers), "-b", f"127.0.0.1:{port}", "--timeout", "30"]
    processes.start("gunicorn", command, env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return base
        if processes.running["gunicorn"].poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not start: {processes.log('gunicorn')[-3000:]}")


def cpu_seconds(sessions: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system, seconds) used so far by each group: the processes of each named session
    (`Processes.sessions()`, children included), every `postgres` process, every `redis-server`, and this
    process. Two readings subtracted tell where a run's CPU went (a shared server's other work is counted too)."""
    tick = os.sysconf("SC_CLK_TCK")
    by_session = {sid: name for name, sid in sessions.items()}
    totals = dict.fromkeys([*sessions, "postgres", "redis", "this process"], 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        session, used = int(fields[3]), (int(fields[11]) + int(fields[12])) / tick
        if session in by_session:
            totals[by_session[session]] += used
        elif command.startswith("postgres"):
            totals["postgres"] += used
        elif command.startswith("redis-server"):
            totals["redis"] += used
        elif int(entry) == os.getpid():
            totals["this process"] += used
    return totals


class JsonHandler(BaseHTTPRequestHandler):
    """A fake provider's request handler: keep-alive, quiet, JSON answers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def cpu_ms_per(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """Milliseconds of CPU per unit of work (`count` of them) by group, between two cpu_seconds() readings."""
    return {
        name: round(1000 * (used - before.get(name, 0.0)) / max(count, 1), 1) for name, used in after.items()
    }


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """A threaded HTTP server on a free loopback port, served from a daemon thread; it and its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def start_production(processes: Processes, env: dict[str, str], run: Path) -> int:
    """The stack as docs/operations.md runs it: gunicorn as the README starts it (its port is returned), the
    inbox processor, a Celery worker with the production defaults, and beat; then waits for the worker's pool
    and beat's first tick."""
    port = free_port()
    start_gunicorn(processes, env, port)
    processes.start("inbox", ["manage.py", "process_inbox"], env)
    processes.start("worker", ["-m", "celery", "-A", "portal", "worker", "-l", "warning"], env)
    processes.start(
        "beat", ["-m", "celery", "-A", "portal", "beat", "-l", "warning", "-s", str(run / "beat")], env
    )
    time.sleep(5)
    return port


# Where the time goes, from the database's own timestamps (a script for run_python): the call's first event
# stored by the webhook → the job written by the inbox processor → its attempt started in a Celery worker →
# attempt done; per job kind, p50 / p95 in seconds, with the jobs' most frequent answers.
STAGES = """
import json
from collections import Counter
from django.db.models import Count
from calls.models import CallEvent, JobAttempt, OutboundJob

def pct(values, q):
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else None

received = {}
for call_id, at in CallEvent.objects.exclude(call=None).order_by("received_at").values_list("call_id", "received_at"):
    received.setdefault(call_id, at)
stages = {}
for attempt in JobAttempt.objects.select_related("job"):
    job = attempt.job
    if job.call_id not in received:
        continue
    row = stages.setdefault(job.kind, {"processed": [], "picked_up": [], "sent": []})
    row["processed"].append((job.created_at - received[job.call_id]).total_seconds())
    row["picked_up"].append((attempt.started_at - job.created_at).total_seconds())
    row["sent"].append(attempt.duration_ms / 1000)
answers = {}
for kind, response in OutboundJob.objects.values_list("kind", "last_response"):
    answers.setdefault(kind, Counter())[response[:80]] += 1
print(json.dumps({
    "events": dict(CallEvent.objects.values_list("status").annotate(n=Count("id"))),
    "jobs": {f"{k}/{s}": n for k, s, n in OutboundJob.objects.values_list("kind", "status").annotate(n=Count("id"))},
    "answers": {kind: dict(counter.most_common(5)) for kind, counter in answers.items()},
    "stages_p50_p95": {
        kind: {name: [pct(v, 0.5), pct(v, 0.95)] for name, v in row.items()} for kind, row in stages.items()
    },
}))
"""


def report(summary: dict[str, Any], json_path: Path | None, run: Path, *, keep: bool = False) -> None:
    """Print the figures, also write them to `json_path` if given, and remove the run's directory of logs
    unless asked to keep it."""
    print(json.dumps(summary, indent=2))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2))
    if keep:
        print(f"logs kept in {run}")
    else:
        shutil.rmtree(run, ignore_errors=True)


def run_directory(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"callbridge-{prefix}-"))


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())
