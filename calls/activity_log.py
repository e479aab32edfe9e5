"""One readable INFO line per call event stored and per delivery attempt, for the console of `make run` and
for operators reading logs (the relay's own runs are DEBUG: portal.logs.RoutineTaskFilter).

Connected to post_save of CallEvent and JobAttempt in CallsConfig.ready(): an observer that only logs, so the
pipeline (calls/services.py, calls/outbox.py) stays free of console concerns. Log lines are never translated.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("callbridge.activity")


def log_call_event(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if not created:
        return
    data = instance.normalised or {}
    parts = [f"call {instance.call.provider_call_id}", instance.kind]
    if data.get("extension"):
        parts.append(f"ext {data['extension']}")
    if data.get("outcome"):
        parts.append(data["outcome"])
    logger.info("%s (%s)", " ".join(parts), instance.pbx_connection)


def log_delivery(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if not created:
        return
    job = instance.job
    status = f" HTTP {instance.status_code}" if instance.status_code else ""
    error = f": {instance.error[:160]}" if instance.error else ""
    logger.info(
        "delivery %s → %s: %s%s in %s ms%s",
        job.kind,
        job.connection_ref,
        instance.outcome,
        status,
        instance.duration_ms,
        error,
    )


def connect() -> None:
    from django.db.models.signals import post_save

    from calls.models import CallEvent, JobAttempt

    post_save.connect(log_call_event, sender=CallEvent, dispatch_uid="callbridge.activity.event")
    post_save.connect(log_delivery, sender=JobAttempt, dispatch_uid="callbridge.activity.delivery")
