"""Fixtures for the Rostelecom adapter's tests: a connection with the guide's example credentials, the seed's
payloads, and helpers that post them signed exactly as the PBX would."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from calls import outbox
from integrations.providers import base
from tests.factories import ExtensionFactory, PbxConnectionFactory, TenantFactory
from tests.inbox import process_inbox
from tests.pipeline.fake_providers import register

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "rostelecom"
CLIENT_ID = "000003C405E6525C64C184258C44EC99"
SIGN_KEY = "00000716ABDA6D4DFF10F82BCBBFC532"
API = "https://api.cloudpbx.rt.ru"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def sign(body: bytes, client_id: str = CLIENT_ID, sign_key: str = SIGN_KEY) -> str:
    """Recomputed here on purpose, independently of the adapter's own function."""
    return hashlib.sha256(client_id.encode() + body + sign_key.encode()).hexdigest()


def as_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body, ensure_ascii=False).encode("utf-8")  # as the PBX sends it: UTF-8, not escaped


def post(
    client: Any,
    connection: Any,
    action: str,
    body: Any,
    *,
    client_id: str | None = CLIENT_ID,
    sign_key: str = SIGN_KEY,
    signature: str | None = None,
    **extra: Any,
) -> Any:
    raw = as_bytes(body)
    headers: dict[str, str] = {}
    if client_id is not None:
        headers["HTTP_X_CLIENT_ID"] = client_id
        headers["HTTP_X_CLIENT_SIGN"] = signature if signature is not None else sign(raw, client_id, sign_key)
    return client.post(
        f"/hooks/rostelecom/{connection.public_id}/{action}",
        data=raw,
        content_type="application/json",
        **headers,
        **extra,
    )


def post_all(client: Any, connection: Any, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        response = post(client, connection, "call_events", body)
        assert response.status_code == 200, response.content
        assert response.json() == {"result": 0, "resultMessage": "ok"}


def run_due() -> None:
    """One relay pass whose published tasks run inline (the worker itself is tested in tests/pipeline)."""
    process_inbox()
    outbox.relay(publish=lambda owner, ids: outbox.run_claim(owner, ids))


@pytest.fixture
def tenant(db):
    return TenantFactory(slug="acme", region="RU", time_zone="Europe/Moscow")


@pytest.fixture
def pbx(tenant):
    return PbxConnectionFactory(
        tenant=tenant,
        provider="rostelecom",
        settings={"domain": "acme.rt.ru", "time_zone": "Europe/Moscow"},
        secrets={"client_id": CLIENT_ID, "sign_key": SIGN_KEY},
    )


@pytest.fixture
def extensions(tenant):
    return [ExtensionFactory(tenant=tenant, number=n) for n in ("101", "102", "103")]


@pytest.fixture
def fake_crm_registered(monkeypatch):
    """The pipeline's fake CRM (tests/pipeline/fake_providers.py) under the registry, for routing answers."""
    register(monkeypatch, "fakecrm", "tests.pipeline.fake_providers.FakeCrm", base.CRM)
