"""`manage.py process_inbox`: the inbox processor (docs/pipeline.md "Inbox").

Applies the call events webhooks stored, then runs a relay pass so the jobs that caused (a CRM pop-up) reach a
Celery worker at once instead of at beat's next pass. It looks for work every INBOX_POLL_SECONDS (0.1 s): one
index lookup when nothing waits. A PostgreSQL NOTIFY from the webhook was measured and rejected: NOTIFY
serialises committing transactions, and on the 2-core benchmark machine it cut concurrent INSERTs from ~2 900/s
to ~390/s (docs/performance.md). Run one or more per deployment (calls are never applied twice at once); beat's
`inbox-sweep` pass every 5 s is the safety net when none runs. SIGTERM/SIGINT stop it after the current pass.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection

from calls.tasks import drain_and_relay

logger = logging.getLogger("callbridge.inbox")


def run_pass() -> int:
    close_old_connections()
    return drain_and_relay(max_passes=100)


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
        poll = settings.INBOX_POLL_SECONDS
        logger.info("inbox processor started (%s, poll %.2f s)", connection.vendor, poll)
        while not stop.is_set():
            try:
                run_pass()
            except Exception:  # the database is away: try again after a pause, never exit
                logger.exception("inbox: pass failed")
                stop.wait(poll * 10)
                continue
            stop.wait(poll)
