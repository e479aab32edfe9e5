"""Exports of the filtered call list (CSV streamed, XLSX), and the tenant file downloaded and uploaded with a
dry-run diff under import_tenant's rules."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

from django.urls import reverse
from openpyxl import load_workbook

from calls.models import Call
from integrations.models import PbxConnection
from tests.admin_world import client_for

T0 = dt.datetime(2026, 11, 30, 20, 51, 7, tzinfo=dt.UTC)  # 23:51:07 in Moscow


def calls(world):
    for n, (phone, result, when) in enumerate(
        [
            ("+79161234567", "answered", T0),
            ("+79169999999", "missed", T0),
            ("+79161234567", "missed", T0 + dt.timedelta(hours=2)),
        ]
    ):
        Call.objects.create(
            tenant=world.tenant_a,
            pbx_connection=world.pbx_a,
            provider_call_id=f"x{n}",
            direction="in",
            client_phone=phone,
            external_phone="+74951110000",
            result=result,
            started_at=when,
            talk_seconds=7,
        )
    Call.objects.create(
        tenant=world.tenant_b,
        pbx_connection=world.pbx_b,
        provider_call_id="other",
        direction="in",
        client_phone="+79161234567",
        started_at=T0,
    )


def read_csv(response) -> list[list[str]]:
    text = b"".join(response.streaming_content).decode("utf-8")
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text[1:])))


def test_csv_honours_every_filter_and_the_search_in_local_time(world):
    calls(world)
    client = client_for(world.support_a)
    response = client.get(
        reverse("admin:calls_call_export_csv"),
        {
            "q": "8 916 123-45-67",
            "result__exact": "answered",
            "started_from": "2026-11-30",
            "started_to": "2026-11-30",
        },
    )
    assert response.status_code == 200 and response.streaming
    header, *rows = read_csv(response)
    assert header[0] == "Started" and len(rows) == 1
    assert rows[0][:5] == ["2026-11-30 23:51:07", "Europe/Moscow", "alpha", "incoming", "+79161234567"]


def test_the_next_local_day_holds_the_late_call(world):
    calls(world)
    response = client_for(world.support_a).get(
        reverse("admin:calls_call_export_csv"), {"started_from": "2026-12-01"}
    )
    (_header, *rows) = read_csv(response)
    assert [r[0] for r in rows] == ["2026-12-01 01:51:07"]


def test_another_tenants_calls_are_never_exported(world):
    calls(world)
    rows = read_csv(client_for(world.admin_a).get(reverse("admin:calls_call_export_csv")))[1:]
    assert "other" not in [r[-1] for r in rows] and len(rows) == 3


def test_xlsx_keeps_phone_numbers_as_text(world):
    calls(world)
    response = client_for(world.support_a).get(
        reverse("admin:calls_call_export_xlsx"), {"result__exact": "missed"}
    )
    sheet = load_workbook(io.BytesIO(b"".join(response.streaming_content))).active
    values = list(sheet.values)
    assert values[0][4] == "Client phone" and len(values) == 3
    assert sheet.cell(row=2, column=5).data_type == "s" and sheet.cell(row=2, column=5).value.startswith(
        "+7916"
    )


def test_the_tenant_file_downloads_with_secrets_masked(world):
    response = client_for(world.admin_a).get(
        reverse("admin:integrations_tenant_file_download", args=[world.tenant_a.pk])
    )
    document = json.loads(response.content)
    assert document["slug"] == "alpha"
    assert document["crm"][0]["secrets"] == {"planfix_token": "***", "pbx_token": "***"}
    assert "pf-token-out" not in response.content.decode()


def upload(client, tenant, document, **extra):
    url = reverse("admin:integrations_tenant_file_upload", args=[tenant.pk])
    if extra.get("apply"):
        return client.post(url, {"document": json.dumps(document), "apply": "1"})
    return client.post(url, {"file": io.BytesIO(json.dumps(document).encode())}, format="multipart")


def exported(client, tenant) -> dict:
    return json.loads(
        client.get(reverse("admin:integrations_tenant_file_download", args=[tenant.pk])).content
    )


def test_an_upload_is_a_dry_run_with_a_diff_then_applied(world):
    client = client_for(world.admin_a)
    document = exported(client, world.tenant_a)
    document["name"] = "Alpha Trading"
    page = upload(client, world.tenant_a, document).content.decode()
    assert "tenant: changed name" in page
    assert "+  &quot;name&quot;: &quot;Alpha Trading&quot;" in page or '+  "name": "Alpha Trading"' in page
    world.tenant_a.refresh_from_db()
    assert world.tenant_a.name == "Alpha Ltd"  # nothing saved by the dry run
    response = upload(client, world.tenant_a, document, apply=True)
    assert response.status_code == 302
    world.tenant_a.refresh_from_db()
    assert world.tenant_a.name == "Alpha Trading"


def test_a_tenant_admin_cannot_change_the_slug_or_network_allowances(world):
    client = client_for(world.admin_a)
    document = exported(client, world.tenant_a)
    document["slug"] = "beta"
    assert "must be alpha" in upload(client, world.tenant_a, document).content.decode()
    document = exported(client, world.tenant_a)
    document["pbx"][0]["allowed_networks"] = ["10.20.0.0/16"]
    page = upload(client, world.tenant_a, document, apply=True).content.decode()
    assert "pbx[0].allowed_networks" in page
    assert PbxConnection.objects.get(pk=world.pbx_a.pk).allowed_networks == []


def test_a_superuser_may_change_network_allowances(world):
    client = client_for(world.superuser)
    document = exported(client, world.tenant_a)
    document["pbx"][0]["allowed_networks"] = ["10.20.0.0/16"]
    assert upload(client, world.tenant_a, document, apply=True).status_code == 302
    assert PbxConnection.objects.get(pk=world.pbx_a.pk).allowed_networks == ["10.20.0.0/16"]


def test_import_rules_apply_to_uploads(world):
    client = client_for(world.admin_a)
    document = exported(client, world.tenant_a)
    document["crm"][0]["settings"]["colour"] = "red"
    assert "colour" in upload(client, world.tenant_a, document).content.decode()


def test_support_cannot_upload(world):
    document = exported(client_for(world.admin_a), world.tenant_a)
    assert upload(client_for(world.support_a), world.tenant_a, document).status_code == 403
    assert upload(client_for(world.admin_b), world.tenant_a, document).status_code == 404
