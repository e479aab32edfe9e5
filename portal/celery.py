"""The Celery app. Settings come from Django's (CELERY_* names); tasks live in each app's tasks.py."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("callbridge")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["calls", "integrations"])


def _connect_logging() -> None:
    # Workers log through Django's LOGGING (LOG_FORMAT=json included), and each task's lines carry the ids of
    # the jobs it sends.
    from portal import logs

    signals.setup_logging.connect(logs.configure_worker_logging, weak=False)
    signals.task_prerun.connect(logs.on_task_prerun, weak=False)
    signals.task_postrun.connect(logs.on_task_postrun, weak=False)


def _close_old_connections(task: Any = None, **_: Any) -> None:
    """Not for a task run in the caller's process (`apply()`, eager): the connection is the caller's, perhaps
    inside its transaction (Celery's own fixup skips those too)."""
    if task is not None and getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()


# What Django does around a request, around a task: drop a connection past CONN_MAX_AGE or one that failed, and
# check a reused one's health first (CELERY_DB_REUSE_MAX in portal/settings.py).
signals.task_prerun.connect(_close_old_connections, weak=False)
signals.task_postrun.connect(_close_old_connections, weak=False)
_connect_logging()
