from __future__ import annotations

import pytest

from integrations.providers import base
from tests.factories import CrmConnectionFactory, ExtensionFactory, PbxConnectionFactory, TenantFactory
from tests.mango.support import API_KEY, API_SALT
from tests.pipeline.fake_providers import register


@pytest.fixture(autouse=True)
def fake_crm(monkeypatch):
    # The pipeline's test CRM records every notice as an outbound job: what a real CRM adapter would be asked.
    register(monkeypatch, "fakecrm", "tests.pipeline.fake_providers.FakeCrm", base.CRM)


@pytest.fixture
def tenant(db):
    return TenantFactory(slug="acme")


@pytest.fixture
def pbx(tenant):
    return PbxConnectionFactory(
        tenant=tenant, provider="mango", settings={}, secrets={"api_key": API_KEY, "api_salt": API_SALT}
    )


@pytest.fixture
def crm(tenant):
    return CrmConnectionFactory(
        tenant=tenant, provider="fakecrm", key="crm", settings={}, secrets={"token": "t"}
    )


@pytest.fixture
def extensions(tenant):
    return [
        ExtensionFactory(tenant=tenant, number="101", name="Ivan Petrov"),
        ExtensionFactory(tenant=tenant, number="102", name="Olga Smirnova"),
        ExtensionFactory(tenant=tenant, number="103", name="Petr Sidorov"),
    ]
