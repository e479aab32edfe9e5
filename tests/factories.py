"""factory-boy factories for the whole suite."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from integrations.models import (
    CrmConnection,
    Extension,
    ExtensionMapping,
    ExternalPhone,
    ExternalPhoneSiteCode,
    PbxConnection,
    Tenant,
    TenantMembership,
)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")
    is_staff = True
    password = factory.django.Password("pw-Secret-123")


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"Tenant {n}")
    slug = factory.Sequence(lambda n: f"tenant{n}")
    region = "RU"
    time_zone = "Europe/Moscow"


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TenantMembership

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    role = TenantMembership.ADMIN


class PbxConnectionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PbxConnection

    tenant = factory.SubFactory(TenantFactory)
    key = "pbx"
    provider = "rostelecom"
    settings = factory.LazyAttribute(lambda c: {"domain": "acme.rt.ru"} if c.provider == "rostelecom" else {})
    secrets = factory.LazyAttribute(
        lambda c: (
            {"client_id": "client-1", "sign_key": "sign-key-1"}
            if c.provider == "rostelecom"
            else {"api_key": "mango-key", "api_salt": "mango-salt"}
        )
    )


_CRM_DEFAULTS = {
    "planfix": (
        {"api_url": "https://acme.planfix.ru/tel/api"},
        {"planfix_token": "pf-token-out", "pbx_token": "pf-token-in-0123456789"},
    ),
    "retailcrm": (
        {"account_url": "https://acme.retailcrm.ru"},
        {"api_key": "rc-api-key", "client_id": "rc-client-id-0123456789"},
    ),
    "wirecrm": (
        {},
        {"webhook_url": "https://acme.wirecrm.com/api/pbx/hook/abc", "pbx_token": "wc-token-0123456789"},
    ),
}


class CrmConnectionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CrmConnection

    tenant = factory.SubFactory(TenantFactory)
    provider = "planfix"
    key = factory.LazyAttribute(lambda c: c.provider)
    priority = 10
    settings = factory.LazyAttribute(lambda c: dict(_CRM_DEFAULTS[c.provider][0]))
    secrets = factory.LazyAttribute(lambda c: dict(_CRM_DEFAULTS[c.provider][1]))


class ExtensionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Extension

    tenant = factory.SubFactory(TenantFactory)
    number = factory.Sequence(lambda n: str(101 + n))
    name = factory.LazyAttribute(lambda e: f"Employee {e.number}")
    email = factory.LazyAttribute(lambda e: f"e{e.number}@example.test")


class ExtensionMappingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ExtensionMapping

    extension = factory.SubFactory(ExtensionFactory)
    crm_connection = factory.SubFactory(CrmConnectionFactory)
    crm_user_id = factory.Sequence(lambda n: str(n + 1))


class ExternalPhoneFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ExternalPhone

    tenant = factory.SubFactory(TenantFactory)
    number = factory.Sequence(lambda n: f"+7499{1000000 + n}")
    label = "Main line"


class SiteCodeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ExternalPhoneSiteCode

    external_phone = factory.SubFactory(ExternalPhoneFactory)
    crm_connection = factory.SubFactory(CrmConnectionFactory)
    code = "shop1"
