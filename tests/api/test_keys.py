"""Tenant API keys: the tenant file's "api_keys" (generate, "***", given values) and the admin (shown once,
revoked), always stored hashed."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.core.management import call_command

from api.models import ApiKey, hash_key
from tests.admin_world import FAST_HASHERS, build_world, client_for
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

GIVEN = "reporting-key-0123456789-abcdefghij"  # 35 characters


def document(api_keys, slug="keyco"):
    return {
        "slug": slug,
        "name": "Key Co",
        "pbx": [],
        "crm": [],
        "extensions": [],
        "external_phones": [],
        "api_keys": api_keys,
    }


def run_import(doc) -> str:
    out = io.StringIO()
    call_command("import_tenant", "-", stdin=io.StringIO(json.dumps(doc)), stdout=out)
    return out.getvalue()


def export(slug="keyco", *flags) -> dict:
    out = io.StringIO()
    call_command("export_tenant", slug, *flags, stdout=out)
    return json.loads(out.getvalue())


def works(client, key: str) -> bool:
    return client.get("/api/v1/calls/", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200


def test_generate_prints_the_key_once_and_stores_only_its_hash(client):
    output = run_import(document([{"name": "reporting", "key": "generate"}]))

    (key,) = re.findall(r"api key 'reporting' generated \(shown once, store it now\): (\S+)", output)
    row = ApiKey.objects.get(name="reporting")
    assert row.key_hash == hash_key(key) and key not in row.key_hash
    assert works(client, key)
    # Importing the same file again keeps the key and prints nothing new.
    again = run_import(document([{"name": "reporting", "key": "generate"}]))
    assert "generated" not in again and "unchanged" in again
    assert works(client, key)


def test_export_writes_every_key_as_mask_even_with_secrets(client):
    run_import(document([{"name": "reporting", "key": GIVEN}, {"name": "bi", "key": "generate"}]))
    expected = [{"name": "bi", "key": "***"}, {"name": "reporting", "key": "***"}]
    assert export()["api_keys"] == expected
    assert export("keyco", "--include-secrets")["api_keys"] == expected


def test_mask_keeps_the_key_of_the_same_name_and_export_import_export_is_stable(client):
    run_import(document([{"name": "reporting", "key": GIVEN}]))
    first = export()
    output = run_import(first)
    assert "unchanged" in output
    assert export() == first
    assert works(client, GIVEN)


def test_mask_without_a_stored_key_of_that_name_is_an_error():
    with pytest.raises(Exception, match=r"api_keys\[0\]\.key.*there is none"):
        run_import(document([{"name": "reporting", "key": "***"}]))
    assert not ApiKey.objects.exists()


def test_a_given_value_replaces_the_key_and_a_key_left_out_is_revoked(client):
    run_import(document([{"name": "reporting", "key": GIVEN}, {"name": "old", "key": "generate"}]))
    new_value = "another-reporting-key-0123456789-xyz"

    output = run_import(document([{"name": "reporting", "key": new_value}]))

    assert "api key 'reporting': replaced" in output and "api key 'old': revoked" in output
    assert works(client, new_value) and not works(client, GIVEN)
    assert ApiKey.objects.active().count() == 1
    assert ApiKey.objects.filter(name="old", revoked_at__isnull=False).exists()


def test_a_file_without_api_keys_leaves_the_keys_alone(client):
    run_import(document([{"name": "reporting", "key": GIVEN}]))
    doc = document([])
    del doc["api_keys"]
    run_import(doc)
    assert works(client, GIVEN)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "r", "key": "short"}, r"api_keys\[0\]\.key: must be at least 32"),
        ({"name": "r", "key": 12345}, r"api_keys\[0\]\.key: must be a string"),
        ({"name": "", "key": "generate"}, r"api_keys\[0\]\.name: must not be empty"),
        ({"name": "r"}, r"api_keys\[0\]\.key: is required"),
        ({"name": "r", "key": "generate", "x": 1}, r"api_keys\[0\]\.x: unknown key"),
    ],
)
def test_bad_entries_are_refused_naming_the_field(entry, message):
    with pytest.raises(Exception, match=message):
        run_import(document([entry]))


def test_duplicate_names_are_refused():
    with pytest.raises(Exception, match=r"api_keys\[1\]\.name: 'r' is already listed"):
        run_import(document([{"name": "r", "key": "generate"}, {"name": "r", "key": GIVEN}]))


def test_dry_run_does_not_print_a_key_that_will_not_exist():
    out = io.StringIO()
    doc = document([{"name": "reporting", "key": "generate"}])
    call_command("import_tenant", "-", "--dry-run", stdin=io.StringIO(json.dumps(doc)), stdout=out)
    assert "would be generated" in out.getvalue()
    assert not ApiKey.objects.exists()


# ---- admin ----------------------------------------------------------------------------------------------


@pytest.fixture
def world(settings):
    settings.PASSWORD_HASHERS = FAST_HASHERS
    return build_world()


def test_a_tenant_admin_creates_a_key_and_sees_it_once(world, client):
    admin = client_for(world.admin_a)
    response = admin.post(
        "/admin/api/apikey/add/", {"tenant": world.tenant_a.pk, "name": "reporting"}, follow=True
    )
    assert response.status_code == 200
    shown = [str(m.message) for m in response.context["messages"]]
    (key,) = [k for message in shown for k in re.findall(r"<code>(\S+)</code>", message)]
    row = ApiKey.objects.get(tenant=world.tenant_a, name="reporting")
    assert row.key_hash == hash_key(key)
    assert works(client, key)
    page = admin.get(f"/admin/api/apikey/{row.pk}/change/").content.decode()
    assert key not in page and row.key_hash not in page


def test_a_tenant_admin_revokes_a_key(world, client):
    row, key = ApiKey.issue(world.tenant_a, "bi")
    admin = client_for(world.admin_a)
    admin.post("/admin/api/apikey/", {"action": "revoke", "_selected_action": [row.pk]})
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert not works(client, key)


def test_keys_are_scoped_to_the_tenants_of_the_user(world):
    theirs, _ = ApiKey.issue(world.tenant_b, "bi")
    admin_a = client_for(world.admin_a)
    assert admin_a.get(f"/admin/api/apikey/{theirs.pk}/change/").status_code == 404
    assert "beta" not in admin_a.get("/admin/api/apikey/").content.decode()
    # Revoking another tenant's key through a forged selection does nothing.
    admin_a.post("/admin/api/apikey/", {"action": "revoke", "_selected_action": [theirs.pk]})
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    # Support staff see keys exist but cannot create or revoke.
    support = client_for(world.support_a)
    assert support.get("/admin/api/apikey/add/").status_code == 403
    response = support.post("/admin/api/apikey/add/", {"tenant": world.tenant_a.pk, "name": "x"})
    assert response.status_code == 403 and not ApiKey.objects.filter(name="x").exists()


def test_a_second_active_key_of_the_same_name_is_refused(world):
    ApiKey.issue(world.tenant_a, "bi")
    admin = client_for(world.admin_a)
    response = admin.post("/admin/api/apikey/add/", {"tenant": world.tenant_a.pk, "name": "bi"})
    assert response.status_code == 200 and "already has an active key" in response.content.decode()


def test_deleting_a_tenant_removes_its_keys(db):
    tenant = TenantFactory()
    ApiKey.issue(tenant, "bi")
    tenant.delete()
    assert not ApiKey.objects.exists()
