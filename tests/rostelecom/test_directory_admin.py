"""The admin action "Import extensions from PBX" on a Rostelecom connection."""

from __future__ import annotations

import json

import pytest
import responses

from integrations import background
from integrations.models import Extension
from tests.factories import MembershipFactory, PbxConnectionFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db

USERS = {
    "result": 0,
    "resultMessage": "ok",
    "users": [
        {"name": "Ivan Petrov", "pin": "101", "email": "ivan@acme.test"},
        {"name": "Olga", "pin": "102", "email": ""},
    ],
    "groups": [],
}


@responses.activate
def test_tenant_admin_imports_extensions_from_the_pbx_directory(client):
    tenant = TenantFactory()
    pbx = PbxConnectionFactory(
        tenant=tenant, settings={"api_url": "https://api.cloudpbx.rt.ru", "domain": "a.rt.ru"}
    )
    user = UserFactory()
    MembershipFactory(tenant=tenant, user=user)
    client.force_login(user)
    responses.add(responses.POST, "https://api.cloudpbx.rt.ru/users_info", body=json.dumps(USERS))
    response = client.post(
        "/admin/integrations/pbxconnection/",
        {"action": "import_extensions", "_selected_action": [pbx.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "queued" in response.content.decode()
    assert not Extension.objects.filter(tenant=tenant).exists()  # the request only queued it
    assert background.run_queued() == 1  # what the worker does
    assert sorted(Extension.objects.filter(tenant=tenant).values_list("number", flat=True)) == ["101", "102"]
    page = client.get(f"/admin/integrations/pbxconnection/{pbx.pk}/change/").content.decode()
    assert "2 created" in page
