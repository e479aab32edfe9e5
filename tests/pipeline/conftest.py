from __future__ import annotations

import pytest

from integrations.providers import base
from tests.factories import CrmConnectionFactory, ExtensionFactory, PbxConnectionFactory, TenantFactory


@pytest.fixture(autouse=True)
def fake_providers(monkeypatch):
    monkeypatch.setitem(base.REGISTRY, "fakepbx", "tests.pipeline.fake_providers.FakePbx")
    monkeypatch.setitem(base.REGISTRY, "fakecrm", "tests.pipeline.fake_providers.FakeCrm")
    monkeypatch.setitem(base.SIDES, "fakepbx", base.PBX)
    monkeypatch.setitem(base.SIDES, "fakecrm", base.CRM)
    monkeypatch.setitem(base.LABELS, "fakepbx", "Fake PBX")
    monkeypatch.setitem(base.LABELS, "fakecrm", "Fake CRM")


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
