"""Celery entry points. Every task is idempotent: a repeated or stale message finds nothing to do."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from celery import shared_task
from django.core.cache import cache

from calls import outbox, processor

logger = logging.getLogger("callbridge.tasks")


def singleton(name: str, ttl: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Beat-scheduled singletons hold a lock on the shared cache, so a second beat does no double work."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = f"lock:{name}"
            if not cache.add(key, "1", ttl):
                logger.info("%s: another run holds the lock", name)
                return None
            try:
                return func(*args, **kwargs)
            finally:
                cache.delete(key)

        wrapper.__name__ = func.__name__
        wrapper.__doc__ = func.__doc__
        return wrapper

    return decorate


@shared_task(name="calls.tasks.relay", ignore_result=True, acks_late=False)
def relay() -> int:
    """Claim due outbox jobs and publish one task per job or batch. Runs every 1.5 s from beat; two relays
    racing are safe (the claim is an atomic conditional UPDATE)."""
    return outbox.relay(publish_claim)


@shared_task(name="calls.tasks.send_jobs", ignore_result=True)
def send_jobs(owner: str, job_ids: Sequence[int]) -> None:
    successor_due = outbox.run_claim(owner, job_ids)
    # The slot this claim held is free: with a backlog, refill it now rather than at beat's next pass, so the
    # backlog drains at the workers' pace (outbox.relay, backpressure); a job that waited for this one (the
    # call's next message to the same CRM) goes out now too, not 1.5 s later.
    if successor_due or outbox.has_backlog():
        try:
            outbox.relay(publish_claim, expire=False)
        except Exception:  # the claim is done; beat's pass will try again
            logger.exception("relay after send_jobs failed")


def publish_claim(owner: str, job_ids: Sequence[int]) -> None:
    """One task per claim, with its kind's time limits: both end before the claim's lease does."""
    from calls.models import OutboundJob

    kind = OutboundJob.objects.filter(pk__in=list(job_ids)).values_list("kind", flat=True).first() or ""
    limits = outbox.timing(kind)
    send_jobs.apply_async(
        args=[owner, list(job_ids)],
        retry=False,
        soft_time_limit=limits.soft_limit,
        time_limit=limits.hard_limit,
    )


@shared_task(name="calls.tasks.process_inbox", ignore_result=True, acks_late=False)
def process_inbox() -> int:
    """The safety net behind `manage.py process_inbox`: beat runs a pass every few seconds, so stored events
    are applied even where no inbox processor runs (slower: no wake-up). Two processors never apply one call
    at once (calls.processor)."""
    return drain_and_relay(max_passes=20)


def drain_and_relay(max_passes: int) -> int:
    """Apply what the inbox holds (up to `max_passes` passes), then publish the jobs that made at once rather
    than at beat's next relay pass. Returns how many events were applied."""
    applied = processor.drain(max_passes=max_passes)
    if applied:
        try:
            outbox.relay(publish_claim)
        except Exception:  # the events are applied; beat's relay pass will publish their jobs
            logger.exception("relay pass after applying events failed")
    return applied


@shared_task(name="calls.tasks.purge_expired_recordings", ignore_result=True)
@singleton("purge_expired_recordings", ttl=3600)
def purge_expired_recordings() -> int:
    """The daily retention run: recording files past retention_days, then whole calls past
    call_retention_days."""
    from calls.recordings import purge_expired
    from calls.retention import purge_old_calls

    return purge_expired() + purge_old_calls()


@shared_task(name="calls.tasks.run_periodic", ignore_result=True)
def run_periodic() -> int:
    """Ask every active connection's adapter for its periodic jobs (periodic history uploads, PBX
    reconciliation) and write them to the outbox. Beat runs it every minute."""
    return _run_periodic()


@singleton("run_periodic", ttl=120)
def _run_periodic() -> int:
    from calls.services import schedule_periodic_jobs

    return schedule_periodic_jobs()


@shared_task(name="calls.tasks.reconcile_silent_calls", ignore_result=True)
def reconcile_silent_calls() -> int:
    """Queue a reconciliation for every call with no end and no event for RECONCILE_AFTER_SECONDS (beat)."""
    return _reconcile_silent_calls()


@singleton("reconcile_silent_calls", ttl=120)
def _reconcile_silent_calls() -> int:
    from calls.reconcile import schedule_reconciliation

    return schedule_reconciliation()
