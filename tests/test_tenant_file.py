"""import_tenant / export_tenant: the tenant file round trip and every rule of DESIGN.md's tenant file."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from integrations.models import (
    CrmConnection,
    Extension,
    ExtensionMapping,
    ExternalPhone,
    PbxConnection,
    Tenant,
)
from integrations.providers.base import SIDES, provider_class
from tests.factories import (
    CrmConnectionFactory,
    ExtensionFactory,
    ExtensionMappingFactory,
    ExternalPhoneFactory,
    PbxConnectionFactory,
    SiteCodeFactory,
    TenantFactory,
)

pytestmark = pytest.mark.django_db

BASE_URL = "https://portal.example"


@pytest.fixture(autouse=True)
def _public_base_url(settings):
    settings.PUBLIC_BASE_URL = BASE_URL


@pytest.fixture
def acme():
    """A tenant as the admin would have typed it in: one PBX, two CRMs, mapped extensions, phones."""
    tenant = TenantFactory(slug="acme", name="Acme Ltd", retention_days=90)
    PbxConnectionFactory(tenant=tenant)
    planfix = CrmConnectionFactory(tenant=tenant, provider="planfix", priority=2)
    retail = CrmConnectionFactory(tenant=tenant, provider="retailcrm", key="retail", priority=1)
    for number, user_id in (("101", "7"), ("102", "8")):
        extension = ExtensionFactory(tenant=tenant, number=number)
        ExtensionMappingFactory(extension=extension, crm_connection=retail, crm_user_id=user_id)
    ExtensionMappingFactory(
        extension=Extension.objects.get(number="101"), crm_connection=planfix, crm_user_id="3"
    )
    phone = ExternalPhoneFactory(tenant=tenant, number="+74999999999", label="Shop 1")
    SiteCodeFactory(external_phone=phone, crm_connection=retail, code="shop1")
    ExternalPhoneFactory(tenant=tenant, number="+74951112233", label="Shop 2")
    return tenant


def export(slug: str, *flags: str) -> str:
    out = io.StringIO()
    call_command("export_tenant", slug, *flags, stdout=out)
    return out.getvalue()


def export_document(slug: str, *flags: str) -> dict:
    return json.loads(export(slug, *flags))


def import_text(text: str, *flags: str) -> str:
    out = io.StringIO()
    call_command("import_tenant", "-", *flags, stdin=io.StringIO(text), stdout=out)
    return out.getvalue()


def import_document(document: dict, *flags: str) -> str:
    return import_text(json.dumps(document), *flags)


def new_tenant_document(**changes) -> dict:
    document = {
        "slug": "newco",
        "name": "New Co",
        "pbx": [
            {
                "key": "pbx",
                "provider": "mango",
                "settings": {},
                "secrets": {"api_key": "mango-key", "api_salt": "mango-salt"},
            }
        ],
        "crm": [
            {
                "key": "pf",
                "provider": "planfix",
                "settings": {"api_url": "https://newco.planfix.ru/tel/api"},
                "secrets": {"planfix_token": "pf-out", "pbx_token": "generate"},
            }
        ],
        "extensions": [{"number": "101", "name": "Ivan", "crm_users": {"pf": "1"}}],
        "external_phones": [{"number": "+7 (495) 111-22-33", "label": "Main", "site_codes": {"pf": "main"}}],
    }
    document.update(changes)
    return document


# ---- round trip ---------------------------------------------------------------------------------------------


def test_export_import_export_gives_the_identical_document(acme):
    first = export("acme")
    import_text(first)
    assert export("acme") == first


def test_export_import_export_with_secrets_gives_the_identical_document(acme):
    first = export("acme", "--include-secrets")
    import_text(first)
    assert export("acme", "--include-secrets") == first
    assert export("acme") == export("acme")


def test_importing_an_exported_file_again_changes_nothing(acme):
    import_text(export("acme"))
    updated_at = {c.key: c.updated_at for c in CrmConnection.objects.all()}
    output = import_text(export("acme"))
    assert "unchanged" in output
    assert {c.key: c.updated_at for c in CrmConnection.objects.all()} == updated_at


def test_export_has_the_document_shape_with_stable_order(acme):
    document = export_document("acme")
    assert list(document) == sorted(document)
    assert document["slug"] == "acme" and document["retention_days"] == 90 and document["region"] == "RU"
    assert [c["key"] for c in document["crm"]] == ["planfix", "retail"]
    assert [c["priority"] for c in document["crm"]] == [2, 1]
    assert [e["number"] for e in document["extensions"]] == ["101", "102"]
    assert document["extensions"][0]["crm_users"] == {"planfix": "3", "retail": "7"}
    assert [p["number"] for p in document["external_phones"]] == ["+74951112233", "+74999999999"]
    assert document["external_phones"][1]["site_codes"] == {"retail": "shop1"}


def test_export_masks_every_secret_unless_asked(acme):
    masked = export_document("acme")
    assert masked["pbx"][0]["secrets"] == {"client_id": "***", "sign_key": "***"}
    assert masked["crm"][1]["secrets"] == {"api_key": "***", "client_id": "***"}
    assert "sign-key-1" not in export("acme")
    revealed = export_document("acme", "--include-secrets")
    assert revealed["pbx"][0]["secrets"] == {"client_id": "client-1", "sign_key": "sign-key-1"}


def test_export_shows_public_id_and_whole_inbound_urls(acme):
    pbx = PbxConnection.objects.get(tenant=acme)
    exported = export_document("acme")["pbx"][0]
    assert exported["public_id"] == pbx.public_id
    base = f"{BASE_URL}/hooks/rostelecom/{pbx.public_id}/"
    assert exported["inbound_urls"]["base"] == base
    assert exported["inbound_urls"]["call_events"] == base + "call_events"


def test_export_fills_settings_defaults(acme):
    settings = export_document("acme")["pbx"][0]["settings"]
    assert settings == {
        "api_url": "https://api.cloudpbx.rt.ru",
        "call_back_from": "pin",
        "domain": "acme.rt.ru",
        "record_ip": "",
        "routing_budget_ms": 800,
        "time_zone": "Europe/Moscow",
    }


def test_export_of_an_unknown_tenant_fails():
    with pytest.raises(CommandError, match="nope"):
        export("nope")


def test_a_tenant_moves_to_a_fresh_database_with_its_public_ids(acme):
    document = export_document("acme", "--include-secrets")
    public_ids = {c.key: c.public_id for c in CrmConnection.objects.all()}
    Tenant.objects.all().delete()
    import_document(document)
    assert {c.key: c.public_id for c in CrmConnection.objects.all()} == public_ids
    assert export_document("acme", "--include-secrets") == document


# ---- creating, reading stdin and files ------------------------------------------------------------------


def test_import_creates_a_tenant_from_standard_input():
    output = import_document(new_tenant_document())
    assert "created" in output
    tenant = Tenant.objects.get(slug="newco")
    assert tenant.name == "New Co" and tenant.region == "RU" and tenant.active
    pbx = PbxConnection.objects.get(tenant=tenant)
    assert pbx.settings["api_url"] == "https://app.mango-office.ru/vpbx/"  # default filled in
    assert pbx.secrets == {"api_key": "mango-key", "api_salt": "mango-salt"}
    phone = ExternalPhone.objects.get(tenant=tenant)
    assert phone.number == "+74951112233"
    assert phone.site_codes.get().code == "main"
    assert ExtensionMapping.objects.get(extension__tenant=tenant).crm_user_id == "1"


def test_import_reads_a_file_path(tmp_path):
    path = tmp_path / "newco.json"
    path.write_text(json.dumps(new_tenant_document()), encoding="utf-8")
    call_command("import_tenant", str(path), stdout=io.StringIO())
    assert Tenant.objects.filter(slug="newco").exists()


def test_import_of_a_missing_file_fails(tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_tenant", str(tmp_path / "missing.json"))


def test_dry_run_reports_changes_and_writes_nothing():
    output = import_document(new_tenant_document(), "--dry-run")
    assert "created" in output and "Nothing was written" in output
    assert not Tenant.objects.exists()


# ---- secrets: "***" and "generate" --------------------------------------------------------------------------


def test_masked_secret_keeps_the_stored_value(acme):
    document = export_document("acme")
    document["crm"][1]["settings"]["upload_strategy"] = "periodic"
    import_document(document)
    retail = CrmConnection.objects.get(key="retail")
    assert retail.settings["upload_strategy"] == "periodic"
    assert retail.secrets == {"api_key": "rc-api-key", "client_id": "rc-client-id-0123456789"}


def test_masked_secret_where_nothing_is_stored_is_an_error_naming_the_field():
    document = new_tenant_document()
    document["pbx"][0]["secrets"]["api_salt"] = "***"
    with pytest.raises(CommandError, match=r"pbx\[0\]\.secrets\.api_salt"):
        import_document(document)
    assert not Tenant.objects.exists()


def test_masked_secret_does_not_carry_over_to_another_provider(acme):
    document = export_document("acme")
    document["crm"][0]["provider"] = "wirecrm"
    document["crm"][0]["settings"] = {}
    document["crm"][0]["secrets"] = {"webhook_url": "https://acme.wirecrm.com/hook", "pbx_token": "***"}
    with pytest.raises(CommandError, match=r"crm\[0\]\.secrets\.pbx_token"):
        import_document(document)


def test_generate_creates_a_token_only_where_none_is_stored():
    output = import_document(new_tenant_document())
    assert "crm[0].secrets.pbx_token: token generated" in output
    token = CrmConnection.objects.get(key="pf").secrets["pbx_token"]
    assert token != "generate" and len(token) >= 32
    assert token not in output

    import_document(new_tenant_document())
    assert CrmConnection.objects.get(key="pf").secrets["pbx_token"] == token


def test_generate_is_refused_for_a_secret_the_provider_issued():
    document = new_tenant_document()
    document["crm"][0]["secrets"]["planfix_token"] = "generate"
    with pytest.raises(CommandError, match=r"crm\[0\]\.secrets\.planfix_token"):
        import_document(document)


def test_secrets_left_out_of_the_file_are_removed(acme):
    document = export_document("acme")
    del document["crm"][1]["secrets"]["api_key"]
    import_document(document)
    assert CrmConnection.objects.get(key="retail").secrets == {"client_id": "rc-client-id-0123456789"}


# ---- public_id ---------------------------------------------------------------------------------------------


def test_a_given_public_id_is_kept():
    document = new_tenant_document()
    document["crm"][0]["public_id"] = "Given-public-id_0123456789"
    import_document(document)
    assert CrmConnection.objects.get(key="pf").public_id == "Given-public-id_0123456789"


def test_without_public_id_an_existing_connection_keeps_its_own_and_a_new_one_gets_one(acme):
    kept = PbxConnection.objects.get(tenant=acme).public_id
    document = export_document("acme")
    del document["pbx"][0]["public_id"]
    document["crm"].append(
        {"key": "wire", "provider": "wirecrm", "secrets": {"webhook_url": "https://a.wirecrm.com/h"}}
    )
    import_document(document)
    assert PbxConnection.objects.get(tenant=acme).public_id == kept
    assert len(CrmConnection.objects.get(key="wire").public_id) >= 22


def test_inbound_urls_in_the_file_are_ignored(acme):
    document = export_document("acme")
    document["pbx"][0]["inbound_urls"] = {"base": "https://elsewhere.example/"}
    import_document(document)
    assert export_document("acme")["pbx"][0]["inbound_urls"]["base"].startswith(BASE_URL)


def test_a_public_id_of_another_tenant_is_refused(acme):
    taken = PbxConnection.objects.get(tenant=acme).public_id
    document = new_tenant_document()
    document["pbx"][0]["public_id"] = taken
    with pytest.raises(CommandError, match=r"pbx\[0\]\.public_id: is already used"):
        import_document(document)


def test_a_guessable_public_id_is_refused():
    document = new_tenant_document()
    document["pbx"][0]["public_id"] = "acme"
    with pytest.raises(CommandError, match=r"pbx\[0\]\.public_id"):
        import_document(document)


# ---- the file is the whole truth ----------------------------------------------------------------------------


def test_objects_missing_from_the_file_are_removed_and_mappings_synced(acme):
    document = export_document("acme")
    document["crm"] = [c for c in document["crm"] if c["key"] == "retail"]
    document["extensions"] = [e for e in document["extensions"] if e["number"] == "101"]
    document["extensions"][0]["crm_users"] = {"retail": "70"}
    document["external_phones"] = [p for p in document["external_phones"] if p["number"] == "+74999999999"]
    document["external_phones"][0]["site_codes"] = {"retail": "shop9"}
    output = import_document(document)

    assert list(CrmConnection.objects.values_list("key", flat=True)) == ["retail"]
    assert list(Extension.objects.values_list("number", flat=True)) == ["101"]
    assert list(ExtensionMapping.objects.values_list("crm_user_id", flat=True)) == ["70"]
    assert list(ExternalPhone.objects.values_list("number", flat=True)) == ["+74999999999"]
    assert ExternalPhone.objects.get().site_code_for(CrmConnection.objects.get()) == "shop9"
    assert "crm 'planfix': removed" in output


def test_a_mapping_whose_user_is_unchanged_keeps_its_status(acme):
    mapping = ExtensionMapping.objects.get(extension__number="102")
    mapping.status = "busy"
    mapping.save()
    import_text(export("acme"))
    assert ExtensionMapping.objects.get(extension__number="102").status == "busy"


def test_the_active_pbx_can_move_to_another_connection(acme):
    document = export_document("acme", "--include-secrets")
    document["pbx"][0]["active"] = False
    document["pbx"].append(
        {"key": "mango", "provider": "mango", "secrets": {"api_key": "k", "api_salt": "s"}, "active": True}
    )
    import_document(document)
    assert PbxConnection.objects.get(tenant=acme, active=True).key == "mango"


def test_two_active_pbx_connections_are_refused(acme):
    document = export_document("acme")
    document["pbx"].append(
        {"key": "mango", "provider": "mango", "secrets": {"api_key": "k", "api_salt": "s"}}
    )
    with pytest.raises(CommandError, match=r"pbx\[1\]\.active"):
        import_document(document)


def test_a_missing_list_is_an_error_rather_than_removing_everything(acme):
    document = export_document("acme")
    del document["extensions"]
    with pytest.raises(CommandError, match="extensions: is required"):
        import_document(document)
    assert Extension.objects.count() == 2


# ---- rejected files: the field is named, the exit is non-zero and nothing is written ----------------------


def _set(path, value):
    def change(document):
        target = document
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return change


def _append(path, value):
    def change(document):
        target = document
        for step in path:
            target = target[step]
        target.append(value)

    return change


REJECTED = [
    pytest.param(
        _set(["crm", 0, "provider"], "bitrix"), r"crm\[0\]\.provider: unknown CRM provider", id="provider"
    ),
    pytest.param(_set(["pbx", 0, "provider"], "planfix"), r"pbx\[0\]\.provider", id="crm-provider-as-pbx"),
    pytest.param(
        _set(["crm", 1, "settings", "colour"], "red"), r"crm\[1\]\.settings\.colour", id="settings-key"
    ),
    pytest.param(
        _set(["crm", 1, "secrets", "password"], "x"), r"crm\[1\]\.secrets\.password", id="secrets-key"
    ),
    pytest.param(
        _set(["crm", 1, "settings", "upload_strategy"], "hourly"),
        r"crm\[1\]\.settings\.upload_strategy",
        id="settings-value",
    ),
    pytest.param(_set(["colour"], "red"), r"colour: unknown key", id="top-level-key"),
    pytest.param(_set(["pbx", 0, "priority"], 1), r"pbx\[0\]\.priority: unknown key", id="connection-key"),
    pytest.param(
        _set(["external_phones", 1, "number"], "12"), r"external_phones\[1\]\.number", id="phone-number"
    ),
    pytest.param(_set(["extensions", 0, "number"], "1234567"), r"extensions\[0\]\.number", id="extension"),
    pytest.param(_set(["extensions", 0, "number"], 101), r"extensions\[0\]\.number", id="extension-as-int"),
    pytest.param(
        _set(["extensions", 1, "crm_users", "bitrix"], "5"),
        r"extensions\[1\]\.crm_users\.bitrix",
        id="crm-users-key",
    ),
    pytest.param(
        _set(["external_phones", 0, "site_codes", "bitrix"], "x"),
        r"external_phones\[0\]\.site_codes\.bitrix",
        id="site-codes-key",
    ),
    pytest.param(
        _append(["extensions"], {"number": "101"}),
        r"extensions\[3\]\.number: '101' is already",
        id="duplicate",
    ),
    pytest.param(_set(["time_zone"], "Mars/Olympus"), r"time_zone", id="time-zone"),
    pytest.param(_set(["region"], "XX"), r"region", id="region"),
]


@pytest.mark.parametrize(("change", "named"), REJECTED)
def test_a_rejected_file_names_the_field_and_writes_nothing(acme, change, named):
    before = export("acme", "--include-secrets")
    document = export_document("acme")
    # Changes that would be written before the faulty part, had the import not been one transaction.
    document["name"] = "Renamed"
    document["pbx"][0]["settings"]["domain"] = "changed.rt.ru"
    document["extensions"].append({"number": "199", "name": "New"})
    change(document)
    with pytest.raises(CommandError, match=named):
        import_document(document)
    assert export("acme", "--include-secrets") == before


def test_every_problem_is_reported_at_once():
    document = new_tenant_document()
    document["crm"][0]["settings"]["colour"] = "red"
    document["external_phones"][0]["number"] = "abc"
    with pytest.raises(CommandError) as error:
        import_document(document)
    assert "crm[0].settings.colour" in str(error.value)
    assert "external_phones[0].number" in str(error.value)


def test_a_file_that_is_not_json_is_refused():
    with pytest.raises(CommandError, match="not valid JSON"):
        import_text("{not json")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[]", r"\(file\): must be an object"),
        ('{"slug": "x", "name": "X", "pbx": {}, "crm": [], "extensions": [], "external_phones": []}', "pbx"),
        (
            '{"slug": "x", "name": "X", "pbx": [{"key": ["a"], "provider": 1}], "crm": [],'
            ' "extensions": [], "external_phones": []}',
            r"pbx\[0\]\.key: must be a string",
        ),
    ],
)
def test_a_file_of_the_wrong_shape_is_refused(text, named):
    with pytest.raises(CommandError, match=named):
        import_text(text)
    assert not Tenant.objects.exists()


# ---- docs/configuration.md stays true ----------------------------------------------------------------------


def _documented_examples() -> list[dict]:
    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)]


def test_the_documented_tenant_file_imports():
    complete = [example for example in _documented_examples() if "slug" in example]
    assert len(complete) == 1
    import_document(complete[0])
    assert Tenant.objects.get(slug="acme").name == "Acme Ltd"


@pytest.mark.parametrize("provider", ["rostelecom", "mango", "planfix", "retailcrm", "wirecrm"])
def test_each_provider_has_a_documented_example_with_every_setting_that_imports(provider):
    (example,) = [e for e in _documented_examples() if e.get("provider") == provider]
    fields = {f.name for f in provider_class(provider).settings_fields}
    assert set(example["settings"]) == fields
    side = SIDES[provider]
    document = new_tenant_document(pbx=[], crm=[], extensions=[], external_phones=[])
    document[side] = [example]
    import_document(document)
    model = PbxConnection if side == "pbx" else CrmConnection
    assert model.objects.get(key=example["key"]).settings == example["settings"]


def test_a_pbx_with_call_history_is_not_removed_by_an_import(acme):
    from calls.models import Call

    pbx = acme.pbxconnections.get()
    Call.objects.create(tenant=acme, pbx_connection=pbx, provider_call_id="c1")
    document = export_document("acme", "--include-secrets")
    document["pbx"] = []
    with pytest.raises(CommandError, match="call history"):
        import_document(document)
    assert Call.objects.filter(pbx_connection=pbx).exists()
