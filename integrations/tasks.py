"""Celery entry points of the admin's background operations (integrations/background.py)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="integrations.tasks.run_connection_operation", ignore_result=True)
def run_connection_operation(operation_id: int) -> None:
    from integrations import background

    background.run(operation_id)


@shared_task(name="integrations.tasks.sweep_connection_operations", ignore_result=True)
def sweep_connection_operations() -> int:
    """Beat, every minute: fail the operations whose worker died, run those whose message was lost."""
    from integrations import background

    background.fail_stalled()
    return background.run_queued(older_than=background.LOST_AFTER)
