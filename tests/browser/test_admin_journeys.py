"""What the people this portal serves do in the admin, in a real browser (Chromium through Playwright)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import responses
from django.utils import timezone

from calls.models import Call, CallEvent, OutboundJob
from integrations import background
from integrations.models import CrmConnection, PbxConnection, Tenant, TenantMembership
from tests.browser.conftest import log_in
from tests.factories import (
    CrmConnectionFactory,
    MembershipFactory,
    PbxConnectionFactory,
    TenantFactory,
    UserFactory,
)

T0 = dt.datetime(2026, 11, 30, 20, 51, 7, tzinfo=dt.UTC)  # 23:51:07 in Moscow


def test_a_superuser_builds_a_tenant_from_scratch_in_russian_with_form_fields_only(page, shot):
    UserFactory(username="root", is_superuser=True)
    log_in(page, "root")
    assert page.locator("html").get_attribute("lang") == "ru"
    assert "Сводка" in page.content()

    page.goto("/admin/integrations/tenant/add/")
    page.fill("#id_name", "ООО Ромашка")
    page.fill("#id_slug", "romashka")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist")
    tenant = Tenant.objects.get(slug="romashka")
    assert tenant.time_zone == "Europe/Moscow"

    # PBX: pick the provider, its settings become fields
    page.click("#add-pbx-connection")
    page.select_option("#id_provider", "rostelecom")
    page.wait_for_selector("#id_setting__domain")
    page.fill("#id_key", "pbx")
    page.fill("#id_setting__domain", "romashka.rt.ru")
    page.fill("#id_setting__routing_budget_ms", "900")
    page.fill("#id_secret__client_id", "client-id")
    page.fill("#id_secret__sign_key", "sign-key")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist")
    pbx = PbxConnection.objects.get(tenant=tenant)
    assert pbx.settings["domain"] == "romashka.rt.ru" and pbx.settings["routing_budget_ms"] == 900
    assert pbx.secrets == {"client_id": "client-id", "sign_key": "sign-key"}

    # Edit it later through the same fields: a choice as a select, a bad number refused at its field
    page.goto(f"/admin/integrations/pbxconnection/{pbx.pk}/change/")
    page.select_option("#id_setting__call_back_from", "sipuri")
    page.fill("#id_setting__routing_budget_ms", "5")
    page.click("input[name=_continue]")
    page.wait_for_selector(".errornote")
    assert (
        page.locator(
            "#id_setting__routing_budget_ms_error, .field-setting__routing_budget_ms .errorlist"
        ).count()
        >= 1
    )
    page.fill("#id_setting__routing_budget_ms", "700")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist")
    pbx.refresh_from_db()
    assert pbx.settings["call_back_from"] == "sipuri" and pbx.settings["routing_budget_ms"] == 700

    # CRM: a URL, a key/value map, a generated token
    page.goto(f"/admin/integrations/tenant/{tenant.pk}/change/")
    page.click("#add-crm-connection")
    page.select_option("#id_provider", "planfix")
    page.wait_for_selector("#id_setting__api_url")
    page.fill("#id_key", "planfix")
    page.fill("#id_setting__api_url", "https://romashka.planfix.ru/tel/api")
    page.fill("input[name=setting__analytics__key_0]", "Менеджер")
    page.fill("input[name=setting__analytics__value_0]", "extension")
    page.fill("#id_secret__planfix_token", "planfix-token")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist")
    crm = CrmConnection.objects.get(tenant=tenant)
    assert crm.settings == {
        "api_url": "https://romashka.planfix.ru/tel/api",
        "analytics": {"Менеджер": "extension"},
    }
    assert len(crm.secrets["pbx_token"]) >= 32  # generated and shown once
    assert crm.secrets["pbx_token"] in page.content()

    # Test connection: queued by the page, run by the worker against a fake Planfix, the result shown
    page.click("#operation-check_connection .operation-button")
    page.wait_for_selector("#operation-check_connection .operation-status >> text=в очереди")
    with responses.RequestsMock() as fake_planfix:
        fake_planfix.add(responses.POST, "https://romashka.planfix.ru/tel/api", json={"contact_name": ""})
        assert background.run_queued() == 1
    page.reload()
    page.wait_for_selector("#operation-check_connection .check-result-ok")
    # written by the worker in the language of the admin who asked
    assert "Planfix ответил на запрос contact (HTTP 200)" in page.inner_text("#operation-check_connection")
    shot(page, "connection-page")


def moscow_tenant_with_calls():
    tenant = TenantFactory(slug="acme", name="Acme", time_zone="Europe/Moscow")
    pbx = PbxConnectionFactory(tenant=tenant)
    crm = CrmConnectionFactory(tenant=tenant, provider="planfix")
    made = []
    for n, (phone, when, result) in enumerate(
        [
            ("+79161234567", T0, "answered"),  # 30 Nov 23:51 local: the one we look for
            ("+79161234567", T0 + dt.timedelta(hours=1), "missed"),  # 1 Dec 00:51 local
            ("+79169999999", T0 - dt.timedelta(hours=2), "missed"),  # same local day, another number
        ]
    ):
        call = Call.objects.create(
            tenant=tenant,
            pbx_connection=pbx,
            provider_call_id=f"rt-{n}",
            direction="in",
            client_phone=phone,
            external_phone="+74951110000",
            started_at=when,
            result=result,
            ended=True,
            talk_seconds=35 if result == "answered" else None,
            wait_seconds=5,
        )
        made.append(call)
    first = made[0]
    for n, (kind, seconds, data) in enumerate(
        [
            ("ringing", 0, {"extension": "101"}),
            ("answered", 5, {"extension": "101"}),
            ("completed", 40, {"outcome": "answered"}),
        ]
    ):
        CallEvent.objects.create(
            call=first,
            pbx_connection=pbx,
            dedupe_key=f"d{n}",
            order_key=f"{n:04}",
            kind=kind,
            occurred_at=T0 + dt.timedelta(seconds=seconds),
            normalised={"kind": kind, **data},
        )
    OutboundJob.objects.create(
        tenant=tenant,
        crm_connection=crm,
        connection_ref=f"crm:{crm.pk}",
        call=first,
        kind="event",
        dedupe_key="j",
        status="sent",
        attempts=1,
        sent_at=T0 + dt.timedelta(seconds=41),
    )
    return tenant, made


def test_support_finds_a_call_by_local_date_and_phone_reads_its_timeline_and_exports(page, shot):
    tenant, _made = moscow_tenant_with_calls()
    support = UserFactory(username="sveta")
    MembershipFactory(tenant=tenant, user=support, role=TenantMembership.SUPPORT)
    log_in(page, "sveta")

    # the language switch: English for this user from now on
    page.select_option("#language-select", "en")
    page.wait_for_selector("html[lang=en]")

    page.goto("/admin/calls/call/")
    page.fill("input[name=started_from]", "2026-11-30")
    page.fill("input[name=started_to]", "2026-11-30")
    page.click("form.callbridge-input-filter input[type=submit]")
    page.fill("#searchbar", "8 (916) 123-45-67")
    page.press("#searchbar", "Enter")
    page.wait_for_selector("#result_list")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert "2026-11-30 23:51:07" in rows.first.inner_text()

    with page.expect_download() as download:
        page.click("#export-csv")
    with open(download.value.path(), encoding="utf-8-sig") as file:
        text = file.read()
    exported = list(csv.reader(io.StringIO(text)))
    assert len(exported) == 2 and exported[1][0] == "2026-11-30 23:51:07" and exported[1][4] == "+79161234567"

    rows.first.locator("th a, td a").first.click()
    timeline = page.inner_text("#call-timeline")
    assert "2026-11-30 23:51:12 Extension 101 answered" in timeline
    assert "Message event to planfix (planfix): sent" in timeline
    shot(page, "call-page")


def test_a_tenant_admin_reads_the_dashboard_and_uploads_a_tenant_file_seeing_its_diff(page, shot, tmp_path):
    tenant, made = moscow_tenant_with_calls()
    Call.objects.filter(pk__in=[c.pk for c in made]).update(started_at=timezone.now() - dt.timedelta(hours=3))
    admin = UserFactory(username="anna")
    MembershipFactory(tenant=tenant, user=admin, role=TenantMembership.ADMIN)
    log_in(page, "anna")

    assert page.inner_text("#figure-total .value") == "3"
    assert page.inner_text("#figure-missed-rate .value") == "66,7 %"  # Russian number format
    page.wait_for_function("() => Chart.getChart('calls-per-day') !== undefined")
    shot(page, "dashboard")

    page.goto(f"/admin/integrations/tenant/{tenant.pk}/change/")
    with page.expect_download() as download:
        page.click("#download-tenant-file")
    with open(download.value.path(), encoding="utf-8") as file:
        document = json.load(file)
    assert document["crm"][0]["secrets"]["planfix_token"] == "***"
    document["name"] = "Acme Trading"
    changed = tmp_path / "acme.json"
    changed.write_text(json.dumps(document, ensure_ascii=False))

    page.click("#upload-tenant-file")
    page.set_input_files("input[name=file]", str(changed))
    page.click("#check-upload")
    diff = page.inner_text("#upload-diff")
    assert '+  "name": "Acme Trading",' in diff and '-  "name": "Acme",' in diff
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme"  # a dry run only
    page.click("#apply-upload")
    page.wait_for_selector(".messagelist")
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme Trading"
