"""The inbox: what a PBX's call-event webhook does before it answers, and nothing more.

A webhook resolves its connection, authenticates the raw body, parses it into normalised events and calls
`store()`: one INSERT of the events (a repeated webhook hits the `unique_call_event` constraint and is ignored),
committed before the answer. No call row, no state, no routing lookup, no jobs, no cache and no broker: the inbox
processor (calls.processor, run by `manage.py process_inbox`) applies the stored events to their calls. On
PostgreSQL a trigger on the table NOTIFYs the processor in the same statement (migration 0005_i13_inbox).
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models.constants import OnConflict
from django.db.models.sql import InsertQuery
from django.utils import timezone

from calls.events import NormalisedEvent, strip_credentials
from calls.models import CallEvent
from integrations.models import PbxConnection
from integrations.providers.base import WebhookInputError

INSERTED_FIELDS = [f for f in CallEvent._meta.concrete_fields if not f.primary_key]


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
    now = timezone.now()
    rows = [
        CallEvent(
            pbx_connection_id=pbx_connection.pk,
            provider_call_id=event.provider_call_id,
            dedupe_key=event.dedupe_key[:300],
            order_key=event.order_key,
            kind=event.kind,
            leg_id=event.leg_id,
            occurred_at=event.timestamp,
            received_at=now,
            normalised=event.as_record(),
            raw=strip_credentials(event.raw, list(secrets)),
        )
        for event in events
    ]
    # One INSERT … ON CONFLICT DO NOTHING (INSERT OR IGNORE on SQLite) in autocommit: atomic on its own, a
    # duplicate is no error, and no BEGIN/COMMIT round trips (bulk_create would wrap it in a transaction).
    query = InsertQuery(CallEvent, on_conflict=OnConflict.IGNORE)
    query.insert_values(INSERTED_FIELDS, rows)
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        for sql, params in query.get_compiler(DEFAULT_DB_ALIAS).as_sql():
            cursor.execute(sql, params)
