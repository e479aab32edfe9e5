from __future__ import annotations

import pytest

from integrations.providers import base
from tests.factories import CrmConnectionFactory, ExtensionFactory, PbxConnectionFactory, TenantFactory
from tests.pipeline.fake_providers import register


@pytest.fixture(autouse=True)
def fake_providers(monkeypatch):
    register(monkeypatch, "fakepbx", "tests.pipeline.fake_providers.FakePbx", base.PBX)
    register(monkeypatch, "fakecrm", "tests.pipeline.fake_providers.FakeCrm", base.CRM)


@pytest.fixture
def tenant(db):
    return TenantFactory(slug="acme")


@pytest.fixture
def pbx(tenant):
    return PbxConnectionFactory(
        tenant=tenant, provider="fakepbx", settings={}, secrets={"token": "pbx-token-123"}
    )


@pytest.fixture
def crm(tenant):
    return CrmConnectionFactory(
        tenant=tenant, provider="fakecrm", key="crm", settings={}, secrets={"token": "t"}
    )


@pytest.fixture
def extensions(tenant):
    return [ExtensionFactory(tenant=tenant, number=n) for n in ("101", "102", "103")]
