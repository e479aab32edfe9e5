"""Faster reading of PostgreSQL `timestamptz` values.

Django's psycopg 3 backend reads every `timestamptz` with its own subclass of psycopg's pure-Python loader (a
regular expression and a few objects per value), which bypasses psycopg's C loader. Rows full of timestamps are
what workers read most (an outbox claim of 200 jobs and their calls holds about 2,000): measured, that parsing
was about a tenth of a worker's CPU in a RetailCRM backlog. This loader parses with `datetime.fromisoformat` (C)
and otherwise does what Django's does: the connection's session time zone is UTC, the value keeps Django's
`tzinfo`. Anything `fromisoformat` refuses (BC dates, infinity) goes to Django's loader as before.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.backends.signals import connection_created


def install(sender: Any, connection: Any, **_: Any) -> None:
    """connection_created: replace the new PostgreSQL connection's timestamptz text loader (its own adapters
    map; Django's template and other connections are untouched)."""
    if connection.vendor != "postgresql":
        return
    from django.db.backends.postgresql.base import TIMESTAMPTZ_OID
    from psycopg.pq import Format

    adapters = connection.connection.adapters
    django_loader = adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
    if django_loader is None or getattr(django_loader, "fromisoformat", False):
        return

    class IsoTzLoader(django_loader):  # type: ignore[misc, valid-type]
        fromisoformat = True

        def load(self, data: Any) -> dt.datetime:
            try:
                return dt.datetime.fromisoformat(bytes(data).decode()).replace(tzinfo=self.timezone)
            except ValueError:
                return super().load(data)

    adapters.register_loader(TIMESTAMPTZ_OID, IsoTzLoader)


connection_created.connect(install, dispatch_uid="portal.dbtime.install")
