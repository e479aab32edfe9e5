"""Tenant isolation of memberships (issue 15 item 5): a tenant admin adds members by exact e-mail only; an
unknown address gets an inactive login and a one-time set-password link; the answer is the same whether the
address existed or not; tenant admins see only users of tenants they administer; superusers keep full search."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.urls import reverse

from integrations.models import TenantMembership
from tests.admin_world import client_for

pytestmark = pytest.mark.django_db
User = get_user_model()
ADD = "/admin/integrations/tenantmembership/add/"
LINK = re.compile(r"https?://[^\s<\"']+/invitation/[A-Za-z0-9_-]+/[A-Za-z0-9-]+/")


def add_member(client, tenant, email: str, **extra):
    return client.post(ADD, {"tenant": tenant.pk, "role": "support", "email": email, **extra}, follow=True)


def answer(response) -> tuple[int, str]:
    """What the admin sees after adding: status and messages, with the link itself masked."""
    texts = [LINK.sub("<link>", str(m)) for m in response.context["messages"]]
    # The new row's own admin URL differs by its id, not by who the address belonged to.
    return response.status_code, re.sub(r"/\d+/change/", "/<id>/change/", " | ".join(sorted(texts)))


def link_in(response) -> str:
    found = LINK.search(response.content.decode())
    assert found, "no invitation link shown"
    return found.group(0)


def test_the_answer_is_the_same_whether_the_address_had_a_login_or_not(world):
    client = client_for(world.admin_a)

    existing = add_member(client, world.tenant_a, "boris@beta.test")  # admin of tenant B
    unknown = add_member(client, world.tenant_a, "nobody@nowhere.test")

    masked_existing = answer(existing)[1].replace("boris@beta.test", "<email>")
    masked_unknown = answer(unknown)[1].replace("nobody@nowhere.test", "<email>")
    assert existing.status_code == unknown.status_code == 200
    assert masked_existing == masked_unknown and "<link>" in masked_existing
    # The two links have the same shape.
    first, second = link_in(existing), link_in(unknown)
    assert len(first.split("/")) == len(second.split("/"))
    assert TenantMembership.objects.filter(tenant=world.tenant_a, user=world.admin_b).exists()


def test_an_unknown_address_gets_an_inactive_login_and_a_one_time_set_password_link(world, client):
    response = add_member(client_for(world.admin_a), world.tenant_a, "dmitry@alpha.test")
    new = User.objects.get(email="dmitry@alpha.test")
    assert not new.is_active and not new.has_usable_password()
    assert TenantMembership.objects.filter(tenant=world.tenant_a, user=new).exists()
    link = link_in(response).split("testserver", 1)[-1].replace("http://localhost:8000", "")
    path = link[link.index("/invitation/") :]

    page = client.get(path)
    assert page.status_code == 200 and "Set your password" in page.content.decode()
    done = client.post(path, {"new_password1": "Long-and-unusual-42", "new_password2": "Long-and-unusual-42"})
    assert done.status_code == 302

    new.refresh_from_db()
    assert new.is_active and new.check_password("Long-and-unusual-42")
    assert client.get(path).status_code == 404  # used once


def test_an_existing_logins_link_never_changes_its_password(world, client):
    response = add_member(client_for(world.admin_a), world.tenant_a, "boris@beta.test")
    link = link_in(response)
    path = link[link.index("/invitation/") :]

    page = client.get(path)
    client.post(path, {"new_password1": "Taken-over-password-1", "new_password2": "Taken-over-password-1"})

    assert page.status_code == 200 and "Set your password" not in page.content.decode()
    world.admin_b.refresh_from_db()
    assert not world.admin_b.check_password("Taken-over-password-1")


def test_a_tenant_admin_cannot_search_users_by_name(world):
    client = client_for(world.admin_a)

    response = client.post(ADD, {"tenant": world.tenant_a.pk, "role": "support", "user_lookup": "boris"})

    assert response.status_code == 200  # the form again: an e-mail address is required
    assert not TenantMembership.objects.filter(tenant=world.tenant_a, user=world.admin_b).exists()
    page = client.get(ADD).content.decode()
    assert 'name="user_lookup"' not in page and 'name="new_password"' not in page


def test_tenant_admins_see_only_users_of_their_tenants(world):
    client = client_for(world.admin_a)

    listing = client.get("/admin/integrations/tenantmembership/?q=o").content.decode()
    tenant_page = client.get(reverse("admin:integrations_tenant_change", args=[world.tenant_a.pk])).content
    users_admin = client.get("/admin/auth/user/")

    for stranger in ("boris", "olga", "root", "boris@beta.test", "olga@elsewhere.test"):
        assert stranger not in listing and stranger not in tenant_page.decode()
    assert users_admin.status_code in (403, 404)


def test_superusers_keep_full_search(world):
    response = client_for(world.superuser).post(
        ADD, {"tenant": world.tenant_a.pk, "role": "support", "user_lookup": "olga"}
    )
    assert response.status_code == 302
    assert TenantMembership.objects.filter(tenant=world.tenant_a, user=world.outsider).exists()


def test_the_link_is_also_mailed_when_email_is_configured(world, settings):
    settings.EMAIL_URL_CONFIGURED = True
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

    response = add_member(client_for(world.admin_a), world.tenant_a, "dmitry@alpha.test")

    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["dmitry@alpha.test"]
    assert link_in(response) in mail.outbox[0].body


def test_without_email_configured_nothing_is_sent(world):
    add_member(client_for(world.admin_a), world.tenant_a, "dmitry@alpha.test")
    assert mail.outbox == []
