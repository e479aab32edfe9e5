"""A RetailCRM world shaped like seed 001's example: extensions 100 and 200 mapped to users 1 and 2, external
phones +7-499-999-99-99 (shop1) and +7-499-888-88-88, and the test fake PBX for click-to-call and ingest."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

import pytest

from calls import outbox
from calls.models import Call, Recording
from integrations.providers import base
from tests.factories import (
    CrmConnectionFactory,
    ExtensionFactory,
    ExtensionMappingFactory,
    ExternalPhoneFactory,
    PbxConnectionFactory,
    SiteCodeFactory,
    TenantFactory,
)
from tests.inbox import process_inbox
from tests.pipeline.fake_providers import register

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "retailcrm"
ACCOUNT = "https://acme.retailcrm.ru"
API_KEY = "rc-api-key-0123456789"
CLIENT_ID = "2dbh26tahjj26sg"  # the seed's example clientId
PBX_URL = "https://pbx.example.test"
UPLOAD_URL = f"{ACCOUNT}/api/v5/telephony/calls/upload"
EVENT_URL = f"{ACCOUNT}/api/v5/telephony/call/event"
MANAGER_URL = f"{ACCOUNT}/api/v5/telephony/manager"
EDIT_URL = f"{ACCOUNT}/api/v5/integration-modules/callbridge/edit"
GET_MODULE_URL = f"{ACCOUNT}/api/v5/integration-modules/callbridge"
USERS_URL = f"{ACCOUNT}/api/v5/users"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def fixture_json(name: str) -> Any:
    return json.loads(fixture_text(name))


def form_field(request: Any, name: str) -> Any:
    """The JSON document RetailCRM receives in one form field of a form-urlencoded POST."""
    body = request.body.decode() if isinstance(request.body, bytes) else request.body
    fields = parse_qs(body, strict_parsing=True)
    assert list(fields) == [name], fields
    return json.loads(fields[name][0])


def run_due() -> None:
    """One relay pass whose published tasks run inline."""
    process_inbox()
    outbox.relay(publish=lambda owner, ids: outbox.run_claim(owner, ids))


@pytest.fixture(autouse=True)
def fake_pbx_registered(monkeypatch):
    register(monkeypatch, "fakepbx", "tests.pipeline.fake_providers.FakePbx", base.PBX)


@pytest.fixture
def tenant(db):
    return TenantFactory(slug="shop", time_zone="Europe/Moscow")


@pytest.fixture
def pbx(tenant):
    return PbxConnectionFactory(
        tenant=tenant, provider="fakepbx", settings={"api_url": PBX_URL}, secrets={"token": "pbx-token-123"}
    )


def retailcrm_connection(tenant: Any, key: str = "retail", **settings: Any) -> Any:
    return CrmConnectionFactory(
        tenant=tenant,
        provider="retailcrm",
        key=key,
        settings={"account_url": ACCOUNT, **settings},
        secrets={"api_key": API_KEY, "client_id": CLIENT_ID},
    )


@pytest.fixture
def crm(tenant):
    return retailcrm_connection(tenant)


@pytest.fixture
def world(tenant, crm, pbx):
    ext100 = ExtensionFactory(tenant=tenant, number="100", email="e100@example.test")
    ext200 = ExtensionFactory(tenant=tenant, number="200", email="e200@example.test")
    map100 = ExtensionMappingFactory(extension=ext100, crm_connection=crm, crm_user_id="1")
    map200 = ExtensionMappingFactory(extension=ext200, crm_connection=crm, crm_user_id="2")
    shop1 = ExternalPhoneFactory(tenant=tenant, number="+74999999999", label="Shop 1")
    shop2 = ExternalPhoneFactory(tenant=tenant, number="+74998888888", label="Shop 2")
    SiteCodeFactory(external_phone=shop1, crm_connection=crm, code="shop1")
    return SimpleNamespace(
        tenant=tenant, crm=crm, pbx=pbx, ext100=ext100, ext200=ext200, map100=map100, map200=map200,
        shop1=shop1, shop2=shop2,
    )  # fmt: skip


START = dt.datetime(2026, 11, 24, 7, 0, 5, tzinfo=dt.UTC)  # 10:00:05 in Moscow


def completed_call(pbx: Any, provider_call_id: str = "pbx-call-1", **fields: Any) -> Call:
    """An answered incoming call on shop1's line, final for CRMs, as the pipeline leaves it."""
    values: dict[str, Any] = {
        "tenant_id": pbx.tenant_id,
        "pbx_connection": pbx,
        "provider_call_id": provider_call_id,
        "direction": Call.IN,
        "client_phone": "+79161234567",
        "client_phone_raw": "89161234567",
        "external_phone": "+74999999999",
        "rang_extensions": ["100"],
        "answered_extensions": ["100"],
        "first_answered_extension": "100",
        "last_answered_extension": "100",
        "started_at": START,
        "answered_at": START + dt.timedelta(seconds=12),
        "ended_at": START + dt.timedelta(seconds=12 + 95),
        "talk_seconds": 95,
        "wait_seconds": 12,
        "result": "answered",
        "ended": True,
        "final_for_crm": True,
        "recording_expected": False,
    }
    values.update(fields)
    call = Call.objects.create(**values)
    if call.recording_expected:
        Recording.objects.create(call=call)
    return call


def upload_jobs(crm: Any, calls: list[Call]) -> None:
    """The upload jobs the pipeline creates when these calls complete."""
    adapter = crm.adapter
    for call in calls:
        specs = adapter.jobs_for(call, [base.Notice("completed", "~2", "100")])
        outbox.create_jobs(crm, [s for s in specs if s.kind == "retailcrm.upload"], call)
