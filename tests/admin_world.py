"""Two tenants, their members and an outsider, for the admin scoping tests; plus a helper that turns a
rendered admin form back into the POST data a browser would send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.test import Client

from integrations.models import (
    CrmConnection,
    Extension,
    ExternalPhone,
    PbxConnection,
    Tenant,
    TenantMembership,
)
from tests.factories import (
    CrmConnectionFactory,
    ExtensionFactory,
    ExternalPhoneFactory,
    MembershipFactory,
    PbxConnectionFactory,
    TenantFactory,
    UserFactory,
)

# Hashing several passwords per test at full strength takes seconds; the tests are about scoping.
FAST_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class World:
    tenant_a: Tenant
    tenant_b: Tenant
    superuser: AbstractUser
    admin_a: AbstractUser
    support_a: AbstractUser
    admin_b: AbstractUser
    outsider: AbstractUser
    pbx_a: PbxConnection
    pbx_b: PbxConnection
    crm_a: CrmConnection
    crm_b: CrmConnection
    extension_a: Extension
    extension_b: Extension
    phone_a: ExternalPhone
    phone_b: ExternalPhone
    membership_b: TenantMembership


def build_world() -> World:
    tenant_a = TenantFactory(slug="alpha", name="Alpha Ltd")
    tenant_b = TenantFactory(slug="beta", name="Beta Ltd")
    admin_a = UserFactory(username="anna", email="anna@alpha.test")
    support_a = UserFactory(username="sasha", email="sasha@alpha.test")
    admin_b = UserFactory(username="boris", email="boris@beta.test")
    MembershipFactory(tenant=tenant_a, user=admin_a, role=TenantMembership.ADMIN)
    MembershipFactory(tenant=tenant_a, user=support_a, role=TenantMembership.SUPPORT)
    membership_b = MembershipFactory(tenant=tenant_b, user=admin_b, role=TenantMembership.ADMIN)
    return World(
        tenant_a=tenant_a,
        tenant_b=tenant_b,
        superuser=UserFactory(username="root", is_superuser=True),
        admin_a=admin_a,
        support_a=support_a,
        admin_b=admin_b,
        outsider=UserFactory(username="olga", email="olga@elsewhere.test"),
        pbx_a=PbxConnectionFactory(tenant=tenant_a),
        pbx_b=PbxConnectionFactory(tenant=tenant_b),
        crm_a=CrmConnectionFactory(tenant=tenant_a, provider="planfix"),
        crm_b=CrmConnectionFactory(tenant=tenant_b, provider="planfix"),
        extension_a=ExtensionFactory(tenant=tenant_a, number="101"),
        extension_b=ExtensionFactory(tenant=tenant_b, number="201"),
        phone_a=ExternalPhoneFactory(tenant=tenant_a, number="+74951110000"),
        phone_b=ExternalPhoneFactory(tenant=tenant_b, number="+74952220000"),
        membership_b=membership_b,
    )


def client_for(user: AbstractUser) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _add(data: dict[str, Any], name: str, value: Any) -> None:
    if value is None or value is False:
        return
    if value is True:
        data[name] = "on"
    elif isinstance(value, list | tuple):
        data[name] = [str(v) for v in value]
    else:
        data[name] = str(value)


def form_payload(response: Any) -> dict[str, Any]:
    """The POST data of an admin change form as rendered: every field with its current value, and every
    inline formset with its management form, unchanged."""
    data: dict[str, Any] = {}
    form = response.context["adminform"].form
    for name in form.fields:
        _add(data, form.add_prefix(name), form[name].value())
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        management = formset.management_form
        for name in management.fields:
            data[management.add_prefix(name)] = str(management[name].value())
        for inline_form in formset.forms:
            for name in inline_form.fields:
                _add(data, inline_form.add_prefix(name), inline_form[name].value())
    return data


def inline_prefix(response: Any, model: type) -> str:
    for inline in response.context["inline_admin_formsets"]:
        if inline.formset.model is model:
            return inline.formset.prefix
    raise LookupError(model)


def add_inline_row(data: dict[str, Any], prefix: str, row: dict[str, str]) -> None:
    """Append one new row to an inline formset in POST data."""
    index = int(data[f"{prefix}-TOTAL_FORMS"])
    for name, value in row.items():
        data[f"{prefix}-{index}-{name}"] = value
    data[f"{prefix}-TOTAL_FORMS"] = str(index + 1)
