"""Structured logs: LOG_FORMAT=json writes one JSON object per line, for web and worker processes alike.

Every line has `time` (UTC, ISO 8601), `level`, `logger` and `message`, plus `tenant`, `call`, `job` and
`connection` wherever they are known: code that learns an id binds it to the current context (`bind()`), and
every line logged in that context carries it. The web binds per request (a middleware clears what the previous
request on the same thread bound), a Celery worker per task.

No secret reaches a log line: messages are masked where they are made (integrations.http.mask and the
adapters), only the fields above are written (never a record's arguments or extras), and `scrub()` removes
anything that still looks like a credential: bearer tokens, Standard Webhooks secrets, tenant API keys,
credential-named query parameters.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

ID_FIELDS = ("tenant", "call", "job", "connection")
_context: ContextVar[dict[str, Any]] = ContextVar("callbridge_log_context", default={})  # noqa: B039 (never mutated)

_SCRUB = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]{8,}"), "whsec_***"),
    (re.compile(r"cbk_[A-Za-z0-9_-]{8,}"), "cbk_***"),
    (
        re.compile(r"(?i)([?&;\s](?:api_?key|token|secret|password|sign(?:ature)?|client_?id)=)[^&\s\"']+"),
        r"\1***",
    ),
)


def scrub(text: str) -> str:
    for pattern, replacement in _SCRUB:
        text = pattern.sub(replacement, text)
    return text


def bind(**ids: Any) -> Token[dict[str, Any]]:
    """Add ids (None values are ignored) to the current context; returns the token to restore it."""
    merged = {**_context.get(), **{k: v for k, v in ids.items() if k in ID_FIELDS and v is not None}}
    return _context.set(merged)


def restore(token: Token[dict[str, Any]]) -> None:
    _context.reset(token)


def clear() -> None:
    _context.set({})


def current() -> dict[str, Any]:
    return dict(_context.get())


@contextmanager
def context(**ids: Any) -> Iterator[None]:
    token = bind(**ids)
    try:
        yield
    finally:
        restore(token)


def bind_connection(connection: Any) -> None:
    """A PBX or CRM connection (and its tenant): connection ids are written as pbx:<id> / crm:<id>, the outbox's
    own notation, so the two sides never collide."""
    if connection is None:
        return
    bind(tenant=connection.tenant_id, connection=f"{connection.SIDE}:{connection.pk}")


class ContextFilter(logging.Filter):
    """Puts the bound ids on every record (an id given as `extra=` to one call wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


# Tasks beat starts every few seconds: their "received", "succeeded" and "Sending due task" lines would scroll
# the console every 1.5 s. They are logged at DEBUG; what happened to calls and deliveries is logged at INFO
# by calls.activity_log.
ROUTINE_TASKS = (
    "calls.tasks.relay",
    "calls.tasks.run_periodic",
    "integrations.tasks.sweep_connection_operations",
    # Each delivery already has its own line (callbridge.activity), each operation its own (callbridge.operations).
    "calls.tasks.send_jobs",
    "integrations.tasks.run_connection_operation",
)
CELERY_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.beat", "celery.worker.request")
# kombu's filesystem transport (make run's broker) says this on every connection: not news to anyone.
ROUTINE_MESSAGES = ("No hostname was supplied. Reverting to default",)


class RoutineTaskFilter(logging.Filter):
    """Demotes Celery's lines about routine tasks (and kombu's filesystem-broker notice) to DEBUG: shown only when
    LOG_LEVEL=DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        celery_info = record.levelno == logging.INFO and record.name.startswith(CELERY_LOGGERS)
        kombu = record.levelno == logging.WARNING and record.name == "kombu.connection"
        if not (celery_info or kombu):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not this filter's business
            return True
        routine = ROUTINE_MESSAGES if kombu else ROUTINE_TASKS
        if not any(text in message for text in routine):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for name in ID_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = _context.get().get(name)
            if value is not None:
                document[name] = value
        if record.exc_info:
            document["exception"] = scrub(self.formatException(record.exc_info))
        elif record.stack_info:
            document["stack"] = scrub(self.formatStack(record.stack_info))
        # default=str: an id bound as something unusual must not turn a log call into an exception.
        return json.dumps(document, ensure_ascii=False, default=str)


class LogContextMiddleware:
    """Each request starts with no ids: threads of a threaded server serve many requests one after another."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        clear()
        try:
            return self.get_response(request)
        finally:
            clear()


# ---------------------------------------------------------------------------------------------------------
# Celery workers
# ---------------------------------------------------------------------------------------------------------


def job_ids(job_ids: Any) -> dict[str, Any]:
    """The ids of the outbox jobs one task sends: job (one id, or a list for a batch), and the connection,
    tenant and call they share."""
    from calls.models import OutboundJob

    ids = [int(i) for i in job_ids or () if str(i).isdigit()]
    rows = list(OutboundJob.objects.filter(pk__in=ids).values_list("tenant_id", "connection_ref", "call_id"))
    if not rows:
        return {"job": ids[0] if len(ids) == 1 else ids or None}
    tenants, refs, calls = ({row[i] for row in rows} for i in range(3))
    return {
        "job": ids[0] if len(ids) == 1 else ids,
        "tenant": tenants.pop() if len(tenants) == 1 else None,
        "connection": refs.pop() if len(refs) == 1 else None,
        "call": calls.pop() if len(calls) == 1 else None,
    }


def on_task_prerun(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    clear()
    if getattr(task, "name", "") == "calls.tasks.send_jobs" and args and len(args) >= 2:
        try:
            bind(**job_ids(args[1]))
        except Exception:  # ids are a convenience: the task must run without them
            logging.getLogger("callbridge.logs").debug("could not read the ids of jobs %r", args[1])


def on_task_postrun(**_: Any) -> None:
    clear()


def configure_worker_logging(**_: Any) -> None:
    """Celery's setup_logging signal: the worker logs through Django's LOGGING (LOG_FORMAT included) instead of
    Celery's own format."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
