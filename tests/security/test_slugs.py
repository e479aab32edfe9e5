"""Slug squatting (issue 15 item 6): only superusers change a tenant's slug; import_tenant of an existing slug
says who administers it before what it changes; --create-only refuses to touch an existing tenant."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from integrations.models import Tenant
from tests.admin_world import client_for, form_payload
from tests.test_tenant_file import new_tenant_document

pytestmark = pytest.mark.django_db


def change_url(tenant: Tenant) -> str:
    return reverse("admin:integrations_tenant_change", args=[tenant.pk])


def post_slug(user, tenant: Tenant, slug: str):
    client = client_for(user)
    data = form_payload(client.get(change_url(tenant)))
    data["slug"] = slug
    return client.post(change_url(tenant), data)


def test_a_tenant_admin_cannot_change_the_slug(world):
    page = client_for(world.admin_a).get(change_url(world.tenant_a)).content.decode()
    post_slug(world.admin_a, world.tenant_a, "squatted")

    assert 'name="slug"' not in page
    world.tenant_a.refresh_from_db()
    assert world.tenant_a.slug == "alpha"


def test_a_superuser_changes_the_slug(world):
    response = post_slug(world.superuser, world.tenant_a, "alpha-two")

    assert response.status_code == 302
    world.tenant_a.refresh_from_db()
    assert world.tenant_a.slug == "alpha-two"


def run_import(document: dict, *flags: str) -> str:
    out = io.StringIO()
    call_command("import_tenant", "-", *flags, stdin=io.StringIO(json.dumps(document)), stdout=out)
    return out.getvalue()


def test_import_of_an_existing_slug_names_its_administrators_and_the_changes(world):
    document = new_tenant_document(slug="alpha", name="Renamed")

    output = run_import(document, "--dry-run")

    assert "exists already; administered by anna@alpha.test" in output
    assert "tenant: changed name" in output
    assert Tenant.objects.get(slug="alpha").name == "Alpha Ltd"


def test_create_only_refuses_an_existing_tenant_and_changes_nothing(world):
    with pytest.raises(CommandError, match=r"exists already.*anna@alpha\.test"):
        run_import(new_tenant_document(slug="alpha", name="Squatted"), "--create-only")

    assert Tenant.objects.get(slug="alpha").name == "Alpha Ltd"
    assert not world.tenant_a.pbxconnections.filter(provider="mango").exists()


def test_create_only_creates_a_new_tenant(world):
    output = run_import(new_tenant_document(), "--create-only")

    assert "created" in output and Tenant.objects.filter(slug="newco").exists()
