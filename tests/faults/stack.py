"""The real stack for the fault suite: gunicorn as in production, the inbox processor, a Celery worker and beat,
PostgreSQL, a private redis-server on a free port (broker and cache; never the machine's shared Redis), and fake
RetailCRM and Rostelecom servers on loopback that record everything they receive.

Leases, task limits, deadlines, retry delays and RECONCILE_AFTER_SECONDS are shrunk through settings (STACK_ENV)
so that the whole suite runs in a few minutes. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import psycopg
import requests

from portal import development_keys
from tests.isolated import BASE_DIR, SETTINGS_VARIABLES
from tests.private_redis import PrivateRedis, free_port

CLIENT_ID = "faults-client-id"
SIGN_KEY = "faults-sign-key"
DEADLINE = 4.0  # OUTBOUND_DEADLINE_SECONDS
MARGIN = 2.0  # OUTBOX_LEASE_MARGIN_SECONDS: soft 6 s, hard 8 s, lease 10 s
TIME_SCALE = 0.05  # retry delays × 0.05: 10 s → 0.5 s, 5 min → 15 s; a 10-minute outage → 30 s
RECONCILE_AFTER = 6.0
ROUTING_BUDGET_MS = 800  # Rostelecom's default routing_budget_ms
MOSCOW = zoneinfo.ZoneInfo("Europe/Moscow")


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------ fake servers


@dataclass
class Received:
    path: str
    at: float
    body: bytes
    answered_at: float = 0.0
    status: int = 0

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode("utf-8", "replace"))


class FakeServer:
    """A loopback HTTP server answering by `answer(path, body) -> (status, json, delay_seconds)`."""

    def __init__(self, answer: Callable[[str, bytes], tuple[int, Any, float]]) -> None:
        self.answer = answer
        self.received: list[Received] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                item = Received(self.path, time.monotonic(), body)
                with server.lock:
                    server.received.append(item)
                status, document, delay = server.answer(self.path, body)
                if delay:
                    time.sleep(delay)
                data = json.dumps(document).encode()
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                item.answered_at, item.status = time.monotonic(), status

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests_to(self, fragment: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if fragment in r.path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeRetailCrm:
    """RetailCRM's telephony API as far as the portal uses it: call events, the history upload (externalId is
    the de-duplication key), the responsible manager for routing. `mode` changes how it answers."""

    def __init__(self) -> None:
        self.mode: dict[str, Any] = {}  # "down": 503 for all; "hang_upload": {sid: seconds}; "manager_delay"
        self.server = FakeServer(self._answer)

    def _answer(self, path: str, body: bytes) -> tuple[int, Any, float]:
        if self.mode.get("down"):
            return 503, {"success": False, "errorMsg": "down for maintenance"}, 0.0
        if "/telephony/manager" in path:
            return (
                200,
                {"success": True, "manager": {"code": "101"}},
                float(self.mode.get("manager_delay", 0)),
            )
        if "/telephony/calls/upload" in path:
            calls = json.loads(parse_qs(body.decode())["calls"][0])
            delay = max(
                (self.mode.get("hang_upload", {}).pop(c.get("externalId"), 0) for c in calls), default=0
            )
            return 200, {"success": True, "processedCallsCount": len(calls), "duplicateCalls": []}, delay
        return 200, {"success": True}, 0.0

    def uploads(self) -> list[tuple[str, Received]]:
        """(externalId, request) for every upload request received."""
        out = []
        for request in self.server.requests_to("/telephony/calls/upload"):
            for call in json.loads(request.form["calls"][0]):
                out.append((call["externalId"], request))
        return out

    def accepted(self) -> dict[str, int]:
        """How many times each externalId was uploaded and answered within the client's deadline (a request the
        portal gave up on, answered after it, is not an upload the portal counted on)."""
        counts: dict[str, int] = {}
        for external_id, request in self.uploads():
            if request.answered_at and request.status == 200 and request.answered_at - request.at < DEADLINE:
                counts[external_id] = counts.get(external_id, 0) + 1
        return counts

    def events_of(self, sid: str) -> list[str]:
        """The call events received for one call, in order of arrival (their `type`)."""
        types = []
        for request in self.server.requests_to("/telephony/call/event"):
            event = json.loads(request.form["event"][0])
            if event.get("callExternalId") == sid:
                types.append(event.get("type", ""))
        return types


class FakeRostelecom:
    """The Rostelecom API as the portal calls it: call_info for the calls this fake knows."""

    def __init__(self) -> None:
        self.known: dict[str, dict[str, Any]] = {}
        self.server = FakeServer(self._answer)

    def _answer(self, path: str, body: bytes) -> tuple[int, Any, float]:
        if path.endswith("/call_info"):
            sid = json.loads(body).get("session_id")
            info = self.known.get(sid)
            if info is None:
                return 200, {"result": "1", "resultMessage": "session not found"}, 0.0
            return 200, {"result": 0, "resultMessage": "", "info": info}, 0.0
        return 200, {"result": 0, "resultMessage": ""}, 0.0


# ------------------------------------------------------------------------------------------------ the stack


@dataclass
class Tenant:
    slug: str
    pbx_public_id: str
    crm_id: int
    crm: FakeRetailCrm


@dataclass
class Stack:
    tmp: Path
    redis: PrivateRedis
    database: str
    pbx: FakeRostelecom
    tenants: dict[str, Tenant] = field(default_factory=dict)
    base_url: str = ""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)

    # ---- processes
    def start(self, name: str, command: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - the process writes it until it stops
        self.processes[name] = subprocess.Popen(
            command, cwd=BASE_DIR, env=self.env, stdout=log, stderr=log, start_new_session=True
        )

    def start_worker(self) -> None:
        self.start(
            "worker",
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "--concurrency", "2", "-l", "INFO",
             "-n", f"faults-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle"],
        )  # fmt: skip

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, sig)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def worker_children(self) -> list[int]:
        """The pool processes of the running worker (its direct children)."""
        parent = self.processes["worker"].pid
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                # The fields after the command name (in parentheses): state, then the parent's pid.
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(stat.parent.name))
        return found

    # ---- the database
    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as conn:
            cursor = conn.execute(query, args)
            return cursor.fetchall() if cursor.description else []

    # ---- the PBX side
    def post_hook(
        self, tenant: str, action: str, body: dict[str, Any], timeout: float = 10
    ) -> tuple[int, float]:
        raw = json.dumps(body, ensure_ascii=False).encode()
        sign = hashlib.sha256(CLIENT_ID.encode() + raw + SIGN_KEY.encode()).hexdigest()
        url = f"{self.base_url}/hooks/rostelecom/{self.tenants[tenant].pbx_public_id}/{action}"
        started = time.monotonic()
        try:
            response = requests.post(
                url,
                data=raw,
                headers={"Content-Type": "application/json", "X-Client-ID": CLIENT_ID, "X-Client-Sign": sign},
                timeout=timeout,
            )
            status = response.status_code
        except requests.RequestException:
            status = 0
        return status, time.monotonic() - started

    def call(
        self, tenant: str, sid: str, *, end: bool = True, answered: bool = True
    ) -> list[tuple[int, float]]:
        """Play one incoming call through the PBX webhooks; returns (status, seconds) per webhook."""
        caller = "sip:7916" + str(abs(hash(sid)) % 10**7).zfill(7) + "@188.254.33.73"
        common = {"session_id": sid, "type": "incoming", "from_number": caller}
        states = [("new", {"request_number": "sip:74992222222@acme.rt.ru", "request_pin": ""})]
        if answered:
            states.append(("connected", {"request_number": "user101@acme.rt.ru", "request_pin": "101"}))
            states.append(("disconnected", {"request_number": "user101@acme.rt.ru", "request_pin": "101"}))
        if end:
            states.append(("end", {"request_number": "user101@acme.rt.ru", "is_record": "false"}))
        self.pbx.known[sid] = {
            "call_type": 1,
            "direction": 1,
            "state": 1 if answered else 2,
            "answering_pin": "101" if answered else "",
            "start_call_date": str(int(time.time())),
            "duration": 5 if answered else 0,
            "is_record": False,
        }
        timings = []
        for state, extra in states:
            stamp = dt.datetime.now(MOSCOW).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            timings.append(
                self.post_hook(tenant, "call_events", {**common, **extra, "state": state, "timestamp": stamp})
            )
            time.sleep(0.02)
        return timings

    def delivered(self, tenant: str, sids: list[str], timeout: float, what: str) -> None:
        """Every call uploaded, and then nothing left to send for them (so a late duplicate would be seen)."""
        crm = self.tenants[tenant].crm
        wait_until(lambda: set(sids) <= set(crm.accepted()), timeout, what, interval=0.5)
        wait_until(lambda: self.settled(sids), timeout, f"{what}: no job left pending", interval=0.5)

    def settled(self, sids: list[str]) -> bool:
        pending = self.sql(
            "SELECT count(*) FROM calls_outboundjob j JOIN calls_call c ON c.id = j.call_id "
            "WHERE c.provider_call_id = ANY(%s) AND (j.status = 'pending' OR j.lease_owner <> '')",
            sids,
        )
        return pending[0][0] == 0

    def record(self, scenario: str, **figures: Any) -> None:
        self.results.append({"scenario": scenario, **figures})


def _database_url(name: str) -> str:
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        base = "postgres://postgres@127.0.0.1:5432/test"
    return base.rsplit("/", 1)[0] + "/" + name


SETUP = """
from integrations.models import CrmConnection, Extension, PbxConnection, Tenant
out = {}
for slug, crm_url, pbx_url in DATA:
    tenant = Tenant.objects.create(name=slug.upper(), slug=slug, region="RU", time_zone="Europe/Moscow")
    Extension.objects.create(tenant=tenant, number="101")
    pbx = PbxConnection.objects.create(
        tenant=tenant, key="pbx", provider="rostelecom",
        settings={"domain": "acme.rt.ru", "api_url": pbx_url, "routing_budget_ms": BUDGET},
        secrets={"client_id": CLIENT_ID, "sign_key": SIGN_KEY},
    )
    crm = CrmConnection.objects.create(
        tenant=tenant, key="retailcrm", provider="retailcrm", priority=1,
        settings={"account_url": crm_url}, secrets={"api_key": "rc-key-" + slug, "client_id": "rc-client-" + slug},
    )
    out[slug] = {"pbx": str(pbx.public_id), "crm": crm.pk}
import json
print("SETUP " + json.dumps(out))
"""


@contextlib.contextmanager
def running_stack(tmp: Path, settings_env: dict[str, str]) -> Iterator[Stack]:
    name = f"callbridge_faults_{os.getpid()}"
    url = _database_url(name)
    admin = _database_url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    redis = PrivateRedis()
    redis.start()
    pbx = FakeRostelecom()
    stack = Stack(tmp=tmp, redis=redis, database=name, pbx=pbx)
    port = free_port()
    stack.base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
    env.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        CALLBRIDGE_READ_DOTENV="0",
        CALLBRIDGE_VAR_DIR=str(tmp / "var"),
        DATABASE_URL=url,
        CELERY_BROKER_URL=f"redis://127.0.0.1:{redis.port}/0",
        CACHE_URL=f"redis://127.0.0.1:{redis.port}/1",
        DEBUG="false",
        SECRET_KEY=development_keys.SECRET_KEY,
        FIELD_ENCRYPTION_KEYS=development_keys.FIELD_ENCRYPTION_KEY,
        ALLOWED_HOSTS="127.0.0.1",
        PUBLIC_BASE_URL=stack.base_url,
        OUTBOUND_ALLOW_PRIVATE_NETWORKS="true",
        OUTBOX_TIME_SCALE=str(TIME_SCALE),
        OUTBOUND_DEADLINE_SECONDS=str(DEADLINE),
        OUTBOX_LEASE_MARGIN_SECONDS=str(MARGIN),
        RECONCILE_AFTER_SECONDS=str(RECONCILE_AFTER),
        LOG_LEVEL="INFO",
        **settings_env,
    )
    stack.env = env
    try:
        migrated = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=BASE_DIR, env=env, timeout=300, capture_output=True, text=True,
        )  # fmt: skip
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        crms = {slug: FakeRetailCrm() for slug in ("a", "b")}
        data = [(slug, crm.server.url, pbx.server.url) for slug, crm in crms.items()]
        code = f"DATA = {data!r}\nBUDGET = {ROUTING_BUDGET_MS}\nCLIENT_ID = {CLIENT_ID!r}\nSIGN_KEY = {SIGN_KEY!r}\n"
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code + SETUP],
            cwd=BASE_DIR, env=env, check=True, timeout=120, capture_output=True, text=True,
        )  # fmt: skip
        made = json.loads(done.stdout.split("SETUP ", 1)[1])
        for slug, ids in made.items():
            stack.tenants[slug] = Tenant(slug, ids["pbx"], ids["crm"], crms[slug])
        stack.start(
            "gunicorn",
            [sys.executable, "-m", "gunicorn", "portal.wsgi", "-k", "gthread", "--threads", "8", "-w", "2",
             "-b", f"127.0.0.1:{port}", "--timeout", "60"],
        )  # fmt: skip
        # The inbox processor applies what the webhooks stored (calls/processor.py), as in production.
        stack.start("processor", [sys.executable, "manage.py", "process_inbox"])
        stack.start(
            "beat",
            [sys.executable, "-m", "celery", "-A", "portal", "beat", "-l", "INFO",
             "-s", str(tmp / "beat-schedule")],
        )  # fmt: skip
        stack.start_worker()
        wait_until(lambda: _up(stack.base_url), 60, "gunicorn serves /healthz")
        yield stack
    finally:
        for name_ in list(stack.processes):
            stack.stop(name_)
        redis.stop()
        pbx.server.close()
        for tenant in stack.tenants.values():
            tenant.crm.server.close()
        with contextlib.suppress(Exception), psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _up(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else 0.0
