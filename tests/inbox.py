"""Test helpers for the inbox: webhooks only store their events (calls.inbox); the inbox processor applies them.

Tests that check what a webhook *causes* (the call's state, the CRM's jobs) use `ProcessingClient` (the default
`client` fixture, tests/conftest.py): after each request to /hooks/ it applies what was stored, as the running
`process_inbox` would a moment later. Tests of the inbox itself use a plain `django.test.Client`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.test import Client

from calls import outbox, processor
from calls.events import NormalisedEvent
from calls.models import Call
from calls.tasks import publish_claim
from integrations.models import PbxConnection


def ingest_now(pbx: PbxConnection, events: Sequence[NormalisedEvent]) -> list[Call]:
    """Store and apply at once (the synchronous path tests used before the inbox)."""
    return processor.ingest(pbx, events)


def process_inbox() -> int:
    """Apply every stored event that is due, as `manage.py process_inbox` does."""
    return processor.drain()


def pump() -> None:
    """One tick of the background processes tests stand in for: the inbox processor, then a relay pass."""
    processor.drain()
    outbox.relay(publish_claim)


class ProcessingClient(Client):
    """A test client whose webhooks are applied before the response returns to the test."""

    def generic(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        response = super().generic(method, path, *args, **kwargs)
        if str(path).startswith("/hooks/"):
            process_inbox()
        return response
