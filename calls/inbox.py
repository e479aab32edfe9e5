"""The inbox: what a PBX's call-event webhook does before it answers, and nothing more.

A webhook resolves its connection, authenticates the raw body, parses it into normalised events and calls
`store()`: one INSERT of the events (a repeated webhook hits the `unique_call_event` constraint and is ignored),
committed before the answer. No call row, no state, no routing lookup, no jobs, no cache and no broker: the inbox
processor (calls.processor, run by `manage.py process_inbox`, which polls every INBOX_POLL_SECONDS) applies the
stored events to their calls.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from calls.events import NormalisedEvent, strip_credentials
from calls.models import CallEvent
from integrations.models import PbxConnection
from integrations.providers.base import WebhookInputError

# The columns a webhook writes; the others (call, next_attempt_at, processed_at) are nullable and stay NULL.
_COLUMNS = (
    "pbx_connection_id",
    "provider_call_id",
    "dedupe_key",
    "order_key",
    "kind",
    "leg_id",
    "occurred_at",
    "received_at",
    "normalised",
    "raw",
    "status",
    "attempts",
    "last_error",
)
# Hand-written rather than built by the ORM on every request (the webhook's cost is mostly Python): ON CONFLICT
# DO NOTHING is understood by PostgreSQL and SQLite (≥ 3.24) alike.
_INSERT = (
    f"INSERT INTO {CallEvent._meta.db_table} ({', '.join(_COLUMNS)}) VALUES "  # noqa: S608 - table names are ours, values parameters
    "({values}) ON CONFLICT (pbx_connection_id, dedupe_key) DO NOTHING"
)


def store(
    pbx_connection: PbxConnection, events: Sequence[NormalisedEvent], secrets: Sequence[str] = ()
) -> None:
    """Store the events of one webhook as unprocessed, in one statement. `secrets` (the connection's secret
    values) are stripped from the stored payloads. An event with a field longer than its column is bad input
    (WebhookInputError: the PBX gets its own 4xx), refused before anything is stored."""
    for event in events:
        problem = event.oversized()
        if problem:
            raise WebhookInputError(problem)
    if not events:
        return
    connection = connections[DEFAULT_DB_ALIAS]
    received = connection.ops.adapt_datetimefield_value(timezone.now())
    json_placeholder = "%s::jsonb" if connection.vendor == "postgresql" else "%s"
    placeholders = (
        "(" + ", ".join(json_placeholder if c in ("normalised", "raw") else "%s" for c in _COLUMNS) + ")"
    )
    params: list[Any] = []
    for event in events:
        params += [
            pbx_connection.pk,
            event.provider_call_id,
            event.dedupe_key[:300],
            event.order_key,
            event.kind,
            event.leg_id,
            connection.ops.adapt_datetimefield_value(event.timestamp),
            received,
            json.dumps(event.as_record()),
            json.dumps(strip_credentials(event.raw, list(secrets)), default=str),
            CallEvent.PENDING,
            0,
            "",
        ]
    sql = _INSERT.replace("({values})", ", ".join([placeholders] * len(events)))
    # One statement in autocommit: atomic on its own, a duplicate is no error, no BEGIN/COMMIT round trips.
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
