"""RetailCRM history upload of a backlog: 10,000 completed calls against a fake RetailCRM on loopback.

The fake speaks `POST /api/v5/telephony/calls/upload` the way RetailCRM does: form field `calls` holding a JSON
array of at most 50 calls, `X-API-KEY`, `duplicateCalls` for externalIds it already has, and a rate limit of
40 requests in any sliding second per key, answering 503 above it. The portal side is the real adapter:
`RetailCrmProvider.perform_batch` with its shared-cache rate limiter (the default database cache), driven by a few
worker threads the way Celery workers run claimed batches. The bound is 40 requests/s × 50 calls = 2,000 calls/s.

    python bench/retailcrm_upload.py                    # 10,000 calls, 4 workers
    python bench/retailcrm_upload.py --calls 2000 --workers 8 --json var/bench-retailcrm.json

A temporary SQLite database is created and removed. The fake listens on 127.0.0.1, so outbound requests to private
addresses are allowed for this process (OUTBOUND_ALLOW_PRIVATE_NETWORKS=true).

    python bench/retailcrm_upload.py --pipeline                 # 30,000 calls: adapter alone, then the pipeline

--pipeline (issue 13) measures, in the same run and against the same fake, first the adapter alone as above,
then a second backlog of the same size through the real pipeline: Celery beat's relay, a Celery worker as
docs/operations.md starts it (`celery -A portal worker`, prefork), the adapter and its limiter. Both rates are
timed from the first to the last upload request the fake accepted; the goal is pipeline ≥ 90 % of adapter alone,
with no 503 and no duplicate. This mode runs on PostgreSQL and Redis (bench/stack.py: BENCH_POSTGRES_URL, a
database `callbridge_bench_upload` is dropped and created; Redis databases 13 and 14) for both measurements.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import stack  # noqa: E402

PIPELINE = "--pipeline" in sys.argv
if PIPELINE:  # PostgreSQL and Redis, shared with the worker and beat processes this mode starts
    _RUN_DIR = stack.run_directory("upload")
    os.environ.update(stack.environment(stack.fresh_database("callbridge_bench_upload"), _RUN_DIR))
_OWN_VAR_DIR = "CALLBRIDGE_VAR_DIR" not in os.environ
if _OWN_VAR_DIR:
    os.environ["CALLBRIDGE_VAR_DIR"] = tempfile.mkdtemp(prefix="callbridge-bench-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("CALLBRIDGE_READ_DOTENV", "0")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("OUTBOUND_ALLOW_PRIVATE_NETWORKS", "true")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection as db_connection  # noqa: E402
from django.db import models  # noqa: E402

API_KEY = "bench-retailcrm-key-0123456789"
UPLOAD_PATH = "/api/v5/telephony/calls/upload"
BATCH = 50
WORKER_OPTIONS = os.environ.get("BENCH_WORKER_OPTIONS", "").split()


# --------------------------------------------------------------------------------------------- the fake CRM


class FakeRetailCrm:
    """Counts what RetailCRM would see. The sliding window counts accepted requests: a 503 is not served work."""

    def __init__(self, rate: int, window: float = 1.0) -> None:
        self.rate = rate
        self.window = window
        self.lock = threading.Lock()
        self.accepted_at: collections.deque[float] = collections.deque()
        self.seen: set[str] = set()
        self.accepted = 0
        self.rejected_503 = 0
        self.bad = 0
        self.calls_received = 0
        self.duplicates_reported = 0
        self.max_batch = 0
        self.peak_in_window = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def reset(self) -> None:
        self.__init__(self.rate, self.window)  # type: ignore[misc]

    def rate_seen(self) -> float:
        """Calls per second from the first to the last accepted upload request."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return self.calls_received / (self.last_at - self.first_at)

    def admit(self) -> bool:
        now = time.monotonic()
        with self.lock:
            while self.accepted_at and now - self.accepted_at[0] >= self.window:
                self.accepted_at.popleft()
            if len(self.accepted_at) >= self.rate:
                self.rejected_503 += 1
                return False
            self.accepted_at.append(now)
            self.peak_in_window = max(self.peak_in_window, len(self.accepted_at))
            return True

    def upload(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        with self.lock:
            now = time.monotonic()
            self.first_at = self.first_at if self.first_at is not None else now
            self.last_at = now
            self.accepted += 1
            self.calls_received += len(calls)
            self.max_batch = max(self.max_batch, len(calls))
            duplicates = [c["externalId"] for c in calls if c["externalId"] in self.seen]
            self.seen.update(c["externalId"] for c in calls)
            self.duplicates_reported += len(duplicates)
        return {
            "success": True,
            "processedCallsCount": len(calls) - len(duplicates),
            "duplicateCalls": duplicates,
        }

    def handler(self) -> type[stack.JsonHandler]:
        fake = self

        class Handler(stack.JsonHandler):  # keep-alive, like the real API behind its load balancer
            def do_POST(self) -> None:
                body = self.read_body().decode()
                if self.path != UPLOAD_PATH:
                    self.answer(404, {"success": False, "errorMsg": "Not found"})
                    return
                if self.headers.get("X-API-KEY") != API_KEY:
                    self.answer(403, {"success": False, "errorMsg": 'Wrong "apiKey" value.'})
                    return
                if not fake.admit():
                    self.answer(503, {"success": False, "errorMsg": "Rate limit exceeded"})
                    return
                try:
                    calls = json.loads(parse_qs(body)["calls"][0])
                except (KeyError, ValueError):
                    calls = None
                if not isinstance(calls, list) or not calls or len(calls) > BATCH:
                    with fake.lock:
                        fake.bad += 1
                    self.answer(400, {"success": False, "errorMsg": "Errors in the entity format"})
                    return
                self.answer(200, fake.upload(calls))

        return Handler


# --------------------------------------------------------------------------------------------- the backlog


def setup_world(url: str, count: int, prefix: str = "bench") -> Any:
    from calls import outbox
    from calls.models import Call, Recording
    from integrations.models import (
        CrmConnection,
        Extension,
        ExtensionMapping,
        ExternalPhone,
        ExternalPhoneSiteCode,
        PbxConnection,
        Tenant,
    )
    from integrations.providers.base import Notice

    call_command("migrate", verbosity=0, interactive=False)
    call_command("createcachetable", verbosity=0)
    tenant = Tenant.objects.create(name="Bench", slug=f"{prefix}-{os.getpid()}-{int(time.time())}")
    pbx = PbxConnection.objects.create(
        tenant=tenant, key="pbx", provider="rostelecom", settings={"domain": "bench.rt.ru"}, secrets={}
    )
    crm = CrmConnection.objects.create(
        tenant=tenant,
        key="retail",
        provider="retailcrm",
        settings={"account_url": url, "send_events": False},
        secrets={"api_key": API_KEY, "client_id": "bench-client-id-0123456789"},
    )
    extensions = [Extension.objects.create(tenant=tenant, number=str(100 + n)) for n in range(20)]
    for n, extension in enumerate(extensions):
        ExtensionMapping.objects.create(extension=extension, crm_connection=crm, crm_user_id=str(n + 1))
    line = ExternalPhone.objects.create(tenant=tenant, number="+74999999999")
    ExternalPhoneSiteCode.objects.create(external_phone=line, crm_connection=crm, code="shop1")

    start = dt.datetime(2026, 11, 24, 7, 0, tzinfo=dt.UTC)
    calls = []
    for n in range(count):
        ext = extensions[n % len(extensions)].number
        answered = n % 4 != 0
        began = start + dt.timedelta(seconds=7 * n)
        calls.append(
            Call(
                tenant=tenant,
                pbx_connection=pbx,
                provider_call_id=f"{prefix}-{n:06d}",
                direction="in" if n % 2 else "out",
                client_phone=f"+7916{1000000 + n:07d}",
                external_phone=line.number,
                rang_extensions=[ext],
                answered_extensions=[ext] if answered else [],
                last_answered_extension=ext if answered else "",
                first_answered_extension=ext if answered else "",
                initiating_extension=ext,
                started_at=began,
                answered_at=began + dt.timedelta(seconds=8) if answered else None,
                ended_at=began + dt.timedelta(seconds=60),
                talk_seconds=52 if answered else 0,
                wait_seconds=8,
                result="answered" if answered else "no_answer",
                ended=True,
                final_for_crm=True,
                recording_expected=answered and n % 3 == 0,
            )
        )
    Call.objects.bulk_create(calls, batch_size=500)
    calls = list(Call.objects.filter(tenant=tenant).order_by("id"))
    Recording.objects.bulk_create([Recording(call=c) for c in calls if c.recording_expected], batch_size=500)
    adapter = crm.adapter
    for first in range(0, len(calls), 500):
        specs = [
            spec
            for call in calls[first : first + 500]
            for spec in adapter.jobs_for(call, [Notice("completed", "~2", call.initiating_extension)])
        ]
        outbox.create_jobs(crm, specs)
    return crm


# --------------------------------------------------------------------------------------------- the drive


def drive(crm: Any, workers: int) -> dict[str, Any]:
    """Workers take 50-job batches and run perform_batch; jobs a batch returns as transient failures (our limiter
    gave up waiting) go back into the queue, as the outbox would retry them."""
    from calls.models import OutboundJob
    from integrations.models import CrmConnection
    from integrations.providers.base import get_provider

    jobs = list(
        OutboundJob.objects.filter(crm_connection=crm).select_related("call", "crm_connection__tenant")
    )
    todo: queue.Queue[list[Any]] = queue.Queue()
    for first in range(0, len(jobs), BATCH):
        todo.put(jobs[first : first + BATCH])
    state = {"sent": 0, "requeued": 0, "failed": 0, "duplicates": 0, "errors": collections.Counter()}
    lock = threading.Lock()
    outstanding = threading.Semaphore(0)
    remaining = [len(jobs)]

    def work() -> None:
        adapter = get_provider(CrmConnection.objects.select_related("tenant").get(pk=crm.pk))
        try:
            while True:
                try:
                    batch = todo.get(timeout=0.2)
                except queue.Empty:
                    if remaining[0] == 0:
                        return
                    continue
                results = adapter.perform_batch(batch)
                retry = []
                with lock:
                    for job in batch:
                        result = results[job.pk]
                        if isinstance(result, Exception):
                            state["errors"][type(result).__name__ + ": " + str(result)[:80]] += 1
                            if getattr(result, "permanent", False):
                                state["failed"] += 1
                                remaining[0] -= 1
                            else:
                                retry.append(job)
                        else:
                            state["sent"] += 1
                            state["duplicates"] += "duplicateCalls" in result
                            remaining[0] -= 1
                    if retry:
                        state["requeued"] += len(retry)
                if retry:
                    todo.put(retry)
        finally:
            db_connection.close()
            outstanding.release()

    started = time.monotonic()
    threads = [threading.Thread(target=work, name=f"worker-{n}") for n in range(workers)]
    for thread in threads:
        thread.start()
    for _ in threads:
        outstanding.acquire()
    state["elapsed"] = time.monotonic() - started
    state["jobs"] = len(jobs)
    return state


def drive_pipeline(crm: Any, fake: FakeRetailCrm, timeout: float) -> dict[str, Any]:
    """The pipeline drains the backlog: beat's relay and a Celery worker, as in production. Waits until no
    job of `crm` is pending (or `timeout`)."""
    from calls.models import OutboundJob

    processes = stack.Processes(_RUN_DIR)
    env = dict(os.environ)
    started = time.monotonic()
    try:
        processes.start(
            "worker", ["-m", "celery", "-A", "portal", "worker", "-l", "warning", *WORKER_OPTIONS], env
        )
        processes.start(
            "beat",
            ["-m", "celery", "-A", "portal", "beat", "-l", "warning", "-s", str(_RUN_DIR / "beat")],
            env,
        )
        pending = OutboundJob.objects.filter(crm_connection=crm, status=OutboundJob.PENDING)
        # CPU per upload request, by process group, from the first request seen to the end of the drain.
        first: tuple[dict[str, float], int] | None = None
        while pending.exists() and time.monotonic() - started < timeout:
            if first is None and fake.accepted:
                first = (stack.cpu_seconds(processes.sessions()), fake.accepted)
            time.sleep(0.05 if first is None else 0.5)
        last = (stack.cpu_seconds(processes.sessions()), fake.accepted)
    finally:
        processes.stop_all()
        db_connection.close()
    statuses = dict(
        OutboundJob.objects.filter(crm_connection=crm).values_list("status").annotate(n=models.Count("id"))
    )
    return {
        "statuses": statuses,
        "wall_seconds": round(time.monotonic() - started, 1),
        "cpu_ms_per_upload_request": stack.cpu_ms_per(first[0], last[0], last[1] - first[1]) if first else {},
    }


def duplicate_check(crm: Any) -> tuple[int, int]:
    """Send the first 50 calls again (new jobs, as "resend to CRM" makes them): all must come back as duplicates
    and count as uploaded."""
    from calls.models import OutboundJob

    jobs = list(
        OutboundJob.objects.filter(crm_connection=crm).select_related("call", "crm_connection__tenant")[
            :BATCH
        ]
    )
    time.sleep(1.1)  # let the limiter's window pass so the check measures duplicates, not the rate limit
    results = crm.adapter.perform_batch(jobs)
    counted = sum(1 for r in results.values() if isinstance(r, str))
    reported = sum(1 for r in results.values() if isinstance(r, str) and "duplicateCalls" in r)
    return counted, reported


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30_000 if PIPELINE else 10_000)
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="then the same backlog again through beat's relay and a worker",
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="--pipeline: give up after this many seconds"
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=int, default=40, help="the fake's limit, requests per sliding second")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    fake = FakeRetailCrm(args.rate)
    server, url = stack.serve(fake.handler())
    try:
        print(f"Preparing {args.calls} completed calls and their upload jobs…", flush=True)
        crm = setup_world(url, args.calls)
        print(f"Uploading through {args.workers} workers to the fake RetailCRM at {url}…", flush=True)
        before = stack.cpu_seconds({}) if PIPELINE else {}
        state = drive(crm, args.workers)
        adapter_only = {
            "calls_per_second_first_to_last_request": round(fake.rate_seen(), 1),
            # The adapter's threads and the fake share this process.
            "cpu_ms_per_upload_request": stack.cpu_ms_per(before, stack.cpu_seconds({}), fake.accepted)
            if PIPELINE
            else {},
            "responses_503": fake.rejected_503,
            "duplicates_reported": fake.duplicates_reported,
        }
        counted, reported = duplicate_check(crm)
        if args.pipeline:
            from calls.models import OutboundJob

            # The adapter-only run sent these itself; the pipeline must not send them again.
            OutboundJob.objects.filter(crm_connection=crm).update(status=OutboundJob.SENT)
            time.sleep(1.1)
            fake.reset()
            print(f"Preparing a second backlog of {args.calls} calls for the pipeline…", flush=True)
            piped = setup_world(url, args.calls, prefix="pipe")
            print("Draining it through beat's relay and a Celery worker…", flush=True)
            pipeline = drive_pipeline(piped, fake, args.timeout)
            pipeline.update(
                calls_per_second_first_to_last_request=round(fake.rate_seen(), 1),
                calls_received=fake.calls_received,
                unique_external_ids=len(fake.seen),
                responses_503=fake.rejected_503,
                requests_refused_400=fake.bad,
                duplicates_reported=fake.duplicates_reported,
                largest_batch=fake.max_batch,
                peak_requests_in_any_second=fake.peak_in_window,
            )
            ratio = pipeline["calls_per_second_first_to_last_request"] / max(
                adapter_only["calls_per_second_first_to_last_request"], 1e-9
            )
            pipeline["ratio_to_adapter_only"] = round(ratio, 3)
            print(json.dumps({"adapter_only": adapter_only, "pipeline": pipeline}, indent=2))
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps({"adapter_only": adapter_only, "pipeline": pipeline}))
            ok = (
                ratio >= 0.9
                and pipeline["responses_503"] == 0
                and pipeline["duplicates_reported"] == 0
                and pipeline["unique_external_ids"] == args.calls
            )
            return 0 if ok else 1
    finally:
        server.shutdown()
        server.server_close()
        if _OWN_VAR_DIR:
            shutil.rmtree(os.environ["CALLBRIDGE_VAR_DIR"], ignore_errors=True)

    bound = args.rate * BATCH
    calls_per_second = state["sent"] / state["elapsed"] if state["elapsed"] else 0.0
    figures = {
        "calls": args.calls,
        "workers": args.workers,
        "fake_rate_limit_rps": args.rate,
        "upload_requests_accepted_200": fake.accepted - 1,  # minus the duplicate check
        "responses_503": fake.rejected_503,
        "requests_refused_400": fake.bad,
        "largest_batch": fake.max_batch,
        "peak_requests_in_any_second": fake.peak_in_window,
        "calls_uploaded": state["sent"],
        "calls_failed": state["failed"],
        "calls_requeued_by_our_limiter": state["requeued"],
        "unique_external_ids_at_fake": len(fake.seen),
        "duplicate_calls_reported_during_backlog": state["duplicates"],
        "elapsed_seconds": round(state["elapsed"], 2),
        "calls_per_second": round(calls_per_second, 1),
        "bound_calls_per_second": bound,
        "ratio_to_bound": round(calls_per_second / bound, 3),
        "duplicate_check": {
            "resent": BATCH,
            "counted_as_uploaded": counted,
            "reported_in_duplicateCalls": reported,
        },
        "python": platform.python_version(),
        "machine": f"{platform.machine()} ({os.cpu_count()} CPUs)",
        "cache": django.conf.settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1],
    }
    print()
    print(
        f"RetailCRM history upload: {args.calls} calls, {args.workers} workers, fake limit {args.rate} req/s"
    )
    print(f"  upload requests accepted (200): {figures['upload_requests_accepted_200']}")
    print(f"  503 responses received:         {fake.rejected_503}")
    print(f"  400 responses (over 50, bad):   {fake.bad}; largest batch {fake.max_batch}")
    print(f"  peak requests in any second:    {fake.peak_in_window}")
    print(f"  calls uploaded:                 {state['sent']} (failed {state['failed']}, "
          f"re-queued after our limiter gave up waiting {state['requeued']})")  # fmt: skip
    print(
        f"  unique externalIds at the fake: {len(fake.seen)}; duplicateCalls during the backlog: {state['duplicates']}"
    )
    print(f"  elapsed:                        {state['elapsed']:.2f} s")
    print(f"  throughput:                     {calls_per_second:.0f} calls/s")
    print(f"  ratio to the {bound} calls/s bound: {calls_per_second / bound:.3f}")
    print(
        f"  duplicate check: {BATCH} calls resent → {reported} reported in duplicateCalls, {counted} counted uploaded"
    )
    if state["errors"]:
        print("  errors seen (then retried or failed):")
        for text, number in state["errors"].most_common(5):
            print(f"    {number} × {text}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2))
    ok = (
        fake.rejected_503 == 0
        and fake.bad == 0
        and state["sent"] == args.calls
        and len(fake.seen) == args.calls
        and state["duplicates"] == 0
        and reported == counted == BATCH
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
