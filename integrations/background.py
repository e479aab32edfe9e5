"""Admin operations on a connection, run by a worker instead of inside the request.

A provider call can take ~13 s (timeouts and retries inside the HTTP client), and an admin action that makes
several would outlive gunicorn's 30 s timeout. So "Test connection", "Import extensions from PBX" and a CRM's
own operations (RetailCRM register / read back) write a ConnectionOperation and return at once; a Celery task
claims it, runs it and records the progress and the result, which the connection page shows with its time.
The task is published when the request's transaction commits; a beat sweep runs any operation whose message
was lost (`run_queued`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone, translation
from django.utils.module_loading import import_string
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from integrations.models import ConnectionOperation, CrmConnection, PbxConnection
from integrations.providers.base import CRM, LABELS, ProviderError, get_provider, provider_class

logger = logging.getLogger("callbridge.operations")

CHECK = "check_connection"
IMPORT_EXTENSIONS = "import_extensions"
DETAIL_LIMIT = 2000
LOST_AFTER = dt.timedelta(seconds=30)  # a queued operation this old had its message lost: the sweep runs it
STALLED_AFTER = dt.timedelta(minutes=10)  # a running operation this old lost its worker


@dataclass(frozen=True)
class Outcome:
    ok: bool
    summary: str
    detail: str = ""


def _check(connection: Any, progress: Callable[[str], None]) -> Outcome:
    progress(str(_("asking the provider")))
    result = get_provider(connection).check_connection()
    return Outcome(result.ok, result.summary, result.detail)


def _import_extensions(connection: Any, progress: Callable[[str], None]) -> Outcome:
    from integrations import directory

    progress(str(_("reading the PBX directory")))
    return Outcome(True, directory.describe(directory.import_extensions(connection)))


def _provider_operation(dotted: str) -> Callable[[Any, Callable[[str], None]], Outcome]:
    def run(connection: Any, progress: Callable[[str], None]) -> Outcome:
        progress(str(_("talking to the provider")))
        return Outcome(True, str(import_string(dotted)(connection)))

    return run


def label(kind: str) -> str:
    """What the admin calls an operation kind."""
    if kind == CHECK:
        return str(_("Test connection"))
    if kind == IMPORT_EXTENSIONS:
        return str(_("Import extensions from PBX"))
    provider, _sep, name = kind.partition(":")
    operations = provider_class(provider).admin_operations if provider in LABELS else {}
    if name in operations:
        return f"{LABELS[provider]}: {operations[name][0]}"
    return kind


def runner(kind: str, connection: Any) -> Callable[[Any, Callable[[str], None]], Outcome] | None:
    if kind == CHECK:
        return _check
    if kind == IMPORT_EXTENSIONS:
        return _import_extensions if connection.SIDE != CRM else None
    provider, _sep, name = kind.partition(":")
    if provider != connection.provider or connection.SIDE != CRM:
        return None
    operation = provider_class(provider).admin_operations.get(name)
    return _provider_operation(operation[1]) if operation else None


def kinds_for(connection: PbxConnection | CrmConnection) -> list[str]:
    """Every operation the connection offers, "Test connection" first."""
    kinds = [CHECK]
    if connection.SIDE != CRM:
        kinds.append(IMPORT_EXTENSIONS)
    else:
        kinds += [
            f"{connection.provider}:{name}" for name in provider_class(connection.provider).admin_operations
        ]
    return kinds


def queue(connection: PbxConnection | CrmConnection, kind: str, user: Any = None) -> ConnectionOperation:
    """Record the operation and have a worker run it once the request's transaction commits."""
    if runner(kind, connection) is None:
        raise ValueError(f"{connection} offers no operation {kind!r}")
    side = "crm_connection" if connection.SIDE == CRM else "pbx_connection"
    operation = ConnectionOperation.objects.create(
        tenant_id=connection.tenant_id,
        kind=kind,
        language=translation.get_language() or "",
        requested_by=user if getattr(user, "pk", None) else None,
        **{side: connection},
    )
    transaction.on_commit(lambda: _publish(operation.pk))
    return operation


def _publish(operation_id: int) -> None:
    from integrations.tasks import run_connection_operation

    try:
        run_connection_operation.apply_async(args=[operation_id], retry=False)
    except Exception:  # the broker is down: the beat sweep runs it later
        logger.warning("operation %s: could not publish; the sweep will run it", operation_id, exc_info=True)


def run(operation_id: int) -> ConnectionOperation | None:
    """Claim one queued operation and run it; None when another worker has it or it is done."""
    now = timezone.now()
    claimed = ConnectionOperation.objects.filter(pk=operation_id, status=ConnectionOperation.QUEUED).update(
        status=ConnectionOperation.RUNNING, started_at=now, progress=str(_("started"))
    )
    if not claimed:
        return None
    operation = ConnectionOperation.objects.select_related(
        "pbx_connection__tenant", "crm_connection__tenant"
    ).get(pk=operation_id)
    connection = operation.connection

    def progress(text: str) -> None:
        ConnectionOperation.objects.filter(pk=operation_id).update(progress=text[:200])

    run_it = runner(operation.kind, connection)
    try:
        if run_it is None:
            raise ProviderError(f"unknown operation {operation.kind!r}", permanent=True)
        with connection.outbound_scope(), translation.override(operation.language or None):
            outcome = run_it(connection, progress)
    except Exception as exc:  # ProviderError / OutboundError: the provider refused or could not be reached
        body = getattr(exc, "body", "") or ""
        outcome = Outcome(False, str(exc), str(body))
        logger.info("operation %s %s on %s failed: %s", operation_id, operation.kind, connection, exc)
    else:
        logger.info("operation %s %s on %s: %s", operation_id, operation.kind, connection, outcome.summary)
    operation.status = ConnectionOperation.OK if outcome.ok else ConnectionOperation.FAILED
    operation.summary = outcome.summary
    operation.detail = outcome.detail[:DETAIL_LIMIT]
    operation.progress = ""
    operation.finished_at = timezone.now()
    operation.save(update_fields=["status", "summary", "detail", "progress", "finished_at"])
    return operation


def fail_stalled(now: dt.datetime | None = None) -> int:
    """Operations left `running` by a worker that died (the task's hard time limit is 120 s): failed, so the
    page stops waiting and the admin can run them again."""
    cutoff = (now or timezone.now()) - STALLED_AFTER
    return ConnectionOperation.objects.filter(
        status=ConnectionOperation.RUNNING, started_at__lt=cutoff
    ).update(
        status=ConnectionOperation.FAILED,
        progress="",
        summary=gettext("The worker stopped before the operation finished; run it again."),
        finished_at=timezone.now(),
    )


def run_queued(older_than: dt.timedelta = dt.timedelta(0)) -> int:
    """Run queued operations (the beat sweep for lost messages; tests call it as the worker would)."""
    cutoff = timezone.now() - older_than
    ids = list(
        ConnectionOperation.objects.filter(status=ConnectionOperation.QUEUED, created_at__lte=cutoff)
        .order_by("created_at")
        .values_list("pk", flat=True)[:50]
    )
    return sum(1 for pk in ids if run(pk) is not None)


def latest(connection: PbxConnection | CrmConnection) -> list[ConnectionOperation]:
    """The most recent operation of each kind the connection offers, for its page."""
    operations = connection.operations.all()[:50]
    seen: dict[str, ConnectionOperation] = {}
    for operation in operations:
        seen.setdefault(operation.kind, operation)
    return [seen[kind] for kind in kinds_for(connection) if kind in seen]
