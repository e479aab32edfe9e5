"""`manage.py process_inbox`: the inbox processor (docs/pipeline.md "Inbox").

Applies the call events webhooks stored, then runs a relay pass so the jobs that caused (a CRM pop-up) reach a
Celery worker at once instead of at beat's next pass. It wakes on PostgreSQL's NOTIFY (a trigger on the events
table sends it in the webhook's own INSERT); on SQLite, or when the listening connection is lost, it looks every
INBOX_POLL_SECONDS. Run one or more per deployment (calls are never applied twice at once); beat's
`inbox-sweep` pass every 5 s is the safety net when none runs. SIGTERM/SIGINT stop it after the current pass.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection

from calls import outbox, processor
from calls.tasks import publish_claim

logger = logging.getLogger("callbridge.inbox")

CHANNEL = "callbridge_inbox"  # migration 0005_i13_inbox's trigger


class Waker:
    """Waits until the database says events were stored, or `timeout` passes."""

    def __init__(self) -> None:
        self.listener: Any = None

    def _listen(self) -> None:
        import psycopg

        params = connection.get_connection_params()
        self.listener = psycopg.connect(**params, autocommit=True)
        self.listener.execute(f"LISTEN {CHANNEL}")

    def wait(self, timeout: float) -> None:
        if connection.vendor != "postgresql":
            time.sleep(timeout)
            return
        try:
            if self.listener is None or self.listener.closed:
                self._listen()
            woke = False
            for _ in self.listener.notifies(timeout=timeout, stop_after=1):
                woke = True
            if woke:  # several webhooks since the last pass: one pass applies them all
                for _ in self.listener.notifies(timeout=0.001):
                    pass
        except Exception as exc:
            logger.warning("inbox: LISTEN connection lost (%s); polling until it is back", exc)
            self.close()
            time.sleep(timeout)

    def close(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(Exception):  # already gone
                self.listener.close()
        self.listener = None


def run_pass() -> int:
    close_old_connections()
    applied = processor.drain(max_passes=100)
    if applied:
        try:
            outbox.relay(publish_claim)
        except Exception:  # beat's relay pass will publish them
            logger.exception("inbox: relay pass after applying events failed")
    return applied


class Command(BaseCommand):
    help = "Apply stored PBX events to their calls (the inbox processor); runs until SIGTERM."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="one pass over what is due, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["once"]:
            self.stdout.write(f"{run_pass()} call(s) applied")
            return
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        waker = Waker()
        poll = settings.INBOX_POLL_SECONDS
        logger.info("inbox processor started (%s, poll %.2f s)", connection.vendor, poll)
        try:
            while not stop.is_set():
                try:
                    run_pass()
                except Exception:  # the database is away: try again after a pause, never exit
                    logger.exception("inbox: pass failed")
                    stop.wait(poll * 4)
                    continue
                waker.wait(poll)
        finally:
            waker.close()
