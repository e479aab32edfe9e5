"""The sandbox providers' fixtures: a tenant with the sandbox PBX and CRM, three extensions, a DID and one
routing-table row, with SANDBOX_ENABLED on and recordings stored under a temporary folder."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.storage import FileSystemStorage

from calls import outbox
from integrations.providers.sandbox.models import SandboxContact
from tests.factories import (
    CrmConnectionFactory,
    ExtensionFactory,
    ExternalPhoneFactory,
    PbxConnectionFactory,
    TenantFactory,
)

CALLER = "+79161110022"
DID = "+74950000001"
SIGNING_KEY = "sandbox-signing-key-0123456789"


@pytest.fixture(autouse=True)
def sandbox_enabled(settings):
    settings.SANDBOX_ENABLED = True


@pytest.fixture
def recordings_in_tmp(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "recordings": {
            "BACKEND": f"{FileSystemStorage.__module__}.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }


@pytest.fixture
def tenant(db):
    tenant = TenantFactory(slug="sandboxed", region="RU")
    for number in ("101", "102", "103"):
        ExtensionFactory(tenant=tenant, number=number)
    ExternalPhoneFactory(tenant=tenant, number=DID)
    return tenant


@pytest.fixture
def pbx(tenant):
    return PbxConnectionFactory(
        tenant=tenant,
        key="sandbox",
        provider="sandbox_pbx",
        settings={},
        secrets={"signing_key": SIGNING_KEY},
    )


@pytest.fixture
def crm(tenant):
    crm = CrmConnectionFactory(
        tenant=tenant, key="sandbox-crm", provider="sandbox_crm", settings={}, secrets={}
    )
    SandboxContact.objects.create(crm_connection=crm, phone=CALLER, name="Ivan Petrov", extension="102")
    return crm


def run_due(rounds: int = 30) -> None:
    """Relay passes whose published tasks run inline (the live-server tests use a real worker)."""
    for _ in range(rounds):
        outbox.relay(publish=lambda owner, ids: outbox.run_claim(owner, ids))


def post_simulated(client: Any, requests: list[Any]) -> list[Any]:
    answers = []
    for item in requests:
        response = client.post(
            item.path, data=item.body, content_type="application/json", headers=item.headers
        )
        assert response.status_code == 200, response.content
        answers.append(response)
    return answers
