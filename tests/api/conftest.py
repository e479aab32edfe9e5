"""The read API's world: two tenants with a fake PBX each, calls played through the real pipeline."""

from __future__ import annotations

import pytest

from api.models import ApiKey
from tests.crm_world import register_fake_pbx
from tests.factories import PbxConnectionFactory, TenantFactory


@pytest.fixture(autouse=True)
def fake_pbx_registered(monkeypatch):
    register_fake_pbx(monkeypatch)


@pytest.fixture
def tenant(db):
    return TenantFactory(slug="acme", time_zone="Europe/Moscow", region="RU")


@pytest.fixture
def other_tenant(db):
    return TenantFactory(slug="globex", time_zone="Asia/Yekaterinburg", region="RU")


@pytest.fixture
def pbx(tenant):
    return PbxConnectionFactory(tenant=tenant, provider="fakepbx", settings={}, secrets={"token": "t" * 24})


@pytest.fixture
def other_pbx(other_tenant):
    return PbxConnectionFactory(
        tenant=other_tenant, provider="fakepbx", settings={}, secrets={"token": "u" * 24}
    )


@pytest.fixture
def api_key(tenant) -> str:
    return ApiKey.issue(tenant, "reporting")[1]


@pytest.fixture
def api(client, api_key):
    """GET with the tenant's key: api("/api/v1/calls/", phone="...")."""

    def get(path: str, key: str | None = None, **params):
        return client.get(path, params, HTTP_AUTHORIZATION=f"Bearer {key or api_key}")

    return get
