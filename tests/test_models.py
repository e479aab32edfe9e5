import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from integrations.phones import InvalidPhone, to_e164
from tests.factories import CrmConnectionFactory, PbxConnectionFactory, TenantFactory

pytestmark = pytest.mark.django_db


def test_secrets_are_encrypted_at_rest():
    crm = CrmConnectionFactory(provider="retailcrm")
    with connection.cursor() as cursor:
        cursor.execute("SELECT secrets FROM integrations_crmconnection WHERE id = %s", [crm.pk])
        stored = cursor.fetchone()[0]
    assert "rc-api-key" not in stored
    crm.refresh_from_db()
    assert crm.secrets["api_key"] == "rc-api-key"


def test_unknown_settings_key_is_rejected_naming_it():
    crm = CrmConnectionFactory.build(provider="retailcrm", tenant=TenantFactory(), settings={"colour": "red"})
    with pytest.raises(ValidationError) as exc:
        crm.clean()
    assert "colour" in str(exc.value)


def test_generate_issues_a_token_once():
    crm = CrmConnectionFactory.build(
        provider="planfix", tenant=TenantFactory(), secrets={"planfix_token": "x", "pbx_token": "generate"}
    )
    crm.clean()
    assert crm.secrets["pbx_token"] != "generate" and len(crm.secrets["pbx_token"]) >= 32


def test_only_one_active_pbx_per_tenant():
    tenant = TenantFactory()
    PbxConnectionFactory(tenant=tenant, key="a")
    second = PbxConnectionFactory.build(tenant=tenant, key="b")
    with pytest.raises(ValidationError):
        second.full_clean()


@pytest.mark.parametrize(
    "raw",
    ["8 (916) 123-45-67", "+7 916 123 45 67", "79161234567", "89161234567", "sip:79161234567@acme.rt.ru"],
)
def test_phone_numbers_in_any_form_become_e164(raw):
    assert to_e164(raw, "RU") == "+79161234567"


def test_short_digit_strings_are_not_phone_numbers():
    with pytest.raises(InvalidPhone):
        to_e164("101", "RU")


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("8 (495) 111-22-33", "+74951112233"),
        ("74951112233", "+74951112233"),
        ("+44 20 7946 0958", "+442079460958"),
    ],
)
def test_national_and_international_forms_of_one_number_agree(raw, e164):
    assert to_e164(raw, "RU") == e164


def test_tenant_knows_its_active_pbx_and_crms():
    tenant = TenantFactory()
    pbx = PbxConnectionFactory(tenant=tenant)
    crm = CrmConnectionFactory(tenant=tenant, provider="wirecrm")
    assert tenant.active_pbx() == pbx and list(tenant.active_crms()) == [crm]


def test_removing_a_pbx_connection_keeps_its_call_history():
    from django.db.models import RestrictedError

    from calls.models import Call

    pbx = PbxConnectionFactory()
    Call.objects.create(tenant=pbx.tenant, pbx_connection=pbx, provider_call_id="c1")
    with pytest.raises(RestrictedError):
        pbx.delete()
    pbx.tenant.delete()  # the whole tenant, history included, can still go
    assert not Call.objects.exists()
