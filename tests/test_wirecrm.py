"""WireCRM: NOTIFY_* webhooks as multipart/form-data with the seed's field names, NOTIFY_START as a routing answer,
click-to-call in. WireCRM's side is faked with `responses`; the pipeline runs for real."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import time
from typing import Any

import pytest
import requests
import responses
from django.utils import timezone

from calls import outbox, routing
from calls.models import OriginateRequest, OutboundJob, RoutingDecision
from integrations.providers.base import Notice, RoutingQuery, get_provider
from tests.crm_world import (
    PBX_URL,
    CallScript,
    deliver,
    fixture_json,
    fixture_text,
    play,
    register_fake_pbx,
    store_recording,
)
from tests.factories import CrmConnectionFactory, ExtensionFactory, PbxConnectionFactory, TenantFactory
from tests.webhook_security import WebhookSecurityContract

pytestmark = pytest.mark.django_db

WEBHOOK_URL = "https://acme.wirecrm.com/api/pbx/hook/5f1d0c9e7a"
PBX_TOKEN = "wc-token-0123456789abcdef"
MOSCOW = dt.timezone(dt.timedelta(hours=3))  # the tenant's zone on the fixtures' dates (no DST since 2011)


@pytest.fixture(autouse=True)
def fake_pbx_registered(monkeypatch):
    register_fake_pbx(monkeypatch)


@pytest.fixture
def tenant(db):
    return TenantFactory(slug="acme", time_zone="Europe/Moscow")


@pytest.fixture
def pbx(tenant):
    return PbxConnectionFactory(
        tenant=tenant, provider="fakepbx", settings={"api_url": PBX_URL}, secrets={"token": "pbx-token-123"}
    )


@pytest.fixture
def wirecrm(tenant):
    return CrmConnectionFactory(
        tenant=tenant,
        provider="wirecrm",
        settings={"start_timeout_ms": 700},
        secrets={"webhook_url": WEBHOOK_URL, "pbx_token": PBX_TOKEN},
    )


@pytest.fixture
def extensions(tenant):
    return [ExtensionFactory(tenant=tenant, number=n) for n in ("100", "101", "104")]


def multipart_fields(request) -> dict[str, str]:
    """The form fields of a request that must be multipart/form-data, read back from the bytes on the wire."""
    content_type = request.headers["Content-Type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    body = request.body if isinstance(request.body, bytes) else request.body.encode()
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body, policy=email.policy.HTTP
    )
    assert message.is_multipart()
    fields = {}
    for part in message.iter_parts():
        assert part.get_content_disposition() == "form-data"
        assert part.get_filename() is None  # plain form fields, not file uploads
        fields[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True).decode()
    return fields


def wirecrm_accepts() -> None:
    responses.add(responses.POST, WEBHOOK_URL, body="", status=200)


def sent_to_wirecrm() -> list[dict[str, str]]:
    return [multipart_fields(c.request) for c in responses.calls if c.request.url == WEBHOOK_URL]


def seed_call(call_id: str, start: str, *, direction: str = "in", client: str, did: str) -> CallScript:
    local = dt.datetime.strptime(start, "%Y-%m-%d %H:%M:%S").replace(tzinfo=MOSCOW)
    return CallScript(call_id, direction=direction, client=client, did=did, start=local.astimezone(dt.UTC))


# ---- NOTIFY_* webhooks ----------------------------------------------------------------------------------


@responses.activate
def test_answered_incoming_call_with_two_ringing_extensions(pbx, wirecrm):
    wirecrm_accepts()
    call = seed_call(
        "in_650cb316b6adab6df1b77bc34e973d20b9028da1",
        "2019-01-29 17:40:03",
        client="+79197018357",
        did="+73422994393",
    )

    play(pbx, call.event(0, "ringing", "100"), call.event(1, "ringing", "104"))
    deliver(wirecrm)
    play(pbx, call.event(5, "answered", "100"), call.event(7, "completed", recorded=True))
    deliver(wirecrm)

    assert sent_to_wirecrm() == fixture_json("wirecrm", "answered_incoming_two_extensions.json")


@responses.activate
def test_events_that_arrive_after_the_calls_end_open_no_card(pbx, wirecrm):
    wirecrm_accepts()
    call = seed_call(
        "in_650cb316b6adab6df1b77bc34e973d20b9028da1",
        "2019-01-29 17:40:03",
        client="+79197018357",
        did="+73422994393",
    )
    # The PBX's webhooks arrive shuffled, the end first: the ringing that follows opens no card any more.
    play(
        pbx,
        call.event(7, "completed", recorded=True),
        call.event(1, "ringing", "104"),
        call.event(0, "ringing", "100"),
        call.event(5, "answered", "100"),
    )

    deliver(wirecrm)

    assert [m["event"] for m in sent_to_wirecrm()] == ["NOTIFY_START", "NOTIFY_END"]
    assert sent_to_wirecrm()[-1] == fixture_json("wirecrm", "answered_incoming_two_extensions.json")[-1]


@responses.activate
def test_history_messages_never_expire_and_keep_the_calls_order_when_wirecrm_was_away(pbx, wirecrm):
    call = seed_call(
        "in_650cb316b6adab6df1b77bc34e973d20b9028da1",
        "2019-01-29 17:40:03",
        client="+79197018357",
        did="+73422994393",
    )
    play(pbx, call.event(0, "ringing", "100"), call.event(1, "ringing", "104"))
    play(pbx, call.event(5, "answered", "100"), call.event(7, "completed"))
    wirecrm_accepts()

    deliver(wirecrm)

    # NOTIFY_START and NOTIFY_END build WireCRM's history: sent, in order. The two NOTIFY_INTERNAL only opened
    # cards for a call that is over: expired (issue 16 item 10), and the END went out all the same.
    expected = fixture_json("wirecrm", "answered_incoming_two_extensions.json")
    assert sent_to_wirecrm() == [m for m in expected if m["event"] != "NOTIFY_INTERNAL"]
    expired = OutboundJob.objects.filter(status=OutboundJob.EXPIRED)
    assert sorted((job.kind, job.payload["internal"]) for job in expired) == [
        ("wirecrm.notify_internal", "100"),
        ("wirecrm.notify_internal", "104"),
    ]


@responses.activate
def test_missed_incoming_call(pbx, wirecrm):
    wirecrm_accepts()
    call = seed_call(
        "in_dc6a51f29dba915c0777ee818726609b8c450728",
        "2022-05-24 12:13:58",
        client="+79880000000",
        did="+79191010100",
    )

    play(pbx, call.event(0, "ringing", "104"))
    deliver(wirecrm)
    play(pbx, call.event(30, "completed", outcome="missed"))
    deliver(wirecrm)

    assert sent_to_wirecrm() == fixture_json("wirecrm", "missed_incoming.json")


@responses.activate
def test_a_caller_who_hangs_up_before_an_answer_is_cancel(pbx, wirecrm):
    wirecrm_accepts()
    call = CallScript("in-cancel")
    play(pbx, call.event(0, "ringing", "101"), call.event(4, "completed", outcome="cancelled"))

    deliver(wirecrm)

    assert sent_to_wirecrm()[-1]["disposition"] == "cancel"


@responses.activate
def test_outgoing_busy_call(pbx, wirecrm):
    wirecrm_accepts()
    call = seed_call(
        "out_811eb5c055f9d2edd102338454dbaa24ccde1589",
        "2019-01-29 13:46:22",
        direction="out",
        client="+79191010100",
        did="",  # no outbound number: caller_id is "0"
    )

    play(pbx, call.event(0, "ringing", "100"))
    deliver(wirecrm)
    play(pbx, call.event(6, "completed", outcome="busy"))
    deliver(wirecrm)

    assert sent_to_wirecrm() == fixture_json("wirecrm", "outgoing_busy.json")


@pytest.mark.parametrize(
    ("outcome", "disposition"),
    [
        ("answered", "answered"),
        ("busy", "busy"),
        ("no_answer", "no answer"),
        ("not_available", "failed"),
        ("not_allowed", "failed"),
        ("failed", "failed"),
    ],
)
@responses.activate
def test_every_outgoing_result_has_its_disposition_and_our_outbound_number(
    pbx, wirecrm, outcome, disposition
):
    wirecrm_accepts()
    call = CallScript("out-1", direction="out", did="+74951234567")
    play(pbx, call.event(0, "ringing", "101"), call.event(9, "completed", outcome=outcome))

    deliver(wirecrm)

    [start, end] = sent_to_wirecrm()
    assert (start["event"], start["caller_id"], start["internal"]) == (
        "NOTIFY_OUT_START",
        "74951234567",
        "101",
    )
    assert (end["event"], end["disposition"]) == ("NOTIFY_OUT_END", disposition)


@responses.activate
def test_record_link_is_the_portals_permanent_link_sent_once_stored(pbx, wirecrm, settings):
    settings.PUBLIC_BASE_URL = "https://portal.example.test"
    wirecrm_accepts()
    script = CallScript("out_3b9a2e42ffc9e6c1d3cfd85e3102ec7ecd6bf21e", direction="out")
    call = play(
        pbx,
        script.event(0, "ringing", "101"),
        script.event(4, "answered", "101"),
        script.event(40, "completed", recorded=True),
    )
    deliver(wirecrm)
    assert [m["event"] for m in sent_to_wirecrm()] == ["NOTIFY_OUT_START", "NOTIFY_OUT_END"]

    recording = store_recording(call)
    deliver(wirecrm)

    # The seed's link, with the token the portal derives for this recording (issue 15: HMAC, not stored).
    expected = fixture_json("wirecrm", "record.json")
    expected["record_link"] = expected["record_link"].replace(
        "filed3cfd85e3102ec7-permanent-link-token", recording.token
    )
    assert sent_to_wirecrm()[-1] == expected
    assert len(sent_to_wirecrm()) == 3


@responses.activate
def test_messages_go_out_as_multipart_form_data_on_the_wire(pbx, wirecrm):
    wirecrm_accepts()
    call = CallScript("in-wire")
    play(pbx, call.event(0, "ringing", "101"), call.event(9, "completed"))

    deliver(wirecrm)

    request = responses.calls[0].request
    assert request.method == "POST"
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'Content-Disposition: form-data; name="event"\r\n\r\nNOTIFY_START\r\n' in request.body
    assert b"filename=" not in request.body
    assert b"application/x-www-form-urlencoded" not in request.body


@responses.activate
def test_no_card_opens_after_the_end_of_the_call_was_sent(pbx, wirecrm):
    wirecrm_accepts()
    script = CallScript("in-late-ring")
    call = play(pbx, script.event(0, "ringing", "101"), script.event(9, "completed"))
    deliver(wirecrm)
    sent = len(sent_to_wirecrm())

    # A NOTIFY_INTERNAL that appears after NOTIFY_END went out (whatever asked for it) is not sent.
    adapter = get_provider(wirecrm)
    late = adapter.jobs_for(call, [Notice("ringing", "00000005", "104")])
    outbox.create_jobs(wirecrm, late, call)
    deliver(wirecrm)

    assert len(sent_to_wirecrm()) == sent
    job = OutboundJob.objects.get(kind="wirecrm.notify_internal", payload__internal="104")
    assert job.status == OutboundJob.EXPIRED  # the call is over: a pop-up for it expires


@responses.activate
def test_internal_calls_are_not_sent_to_wirecrm(pbx, wirecrm):
    call = CallScript("int-1", direction="internal")
    play(pbx, call.event(0, "ringing", "101"), call.event(5, "completed"))
    assert not OutboundJob.objects.filter(crm_connection=wirecrm).exists()


# ---- errors from WireCRM --------------------------------------------------------------------------------


def start_job(pbx, wirecrm) -> OutboundJob:
    call = CallScript("in-err")
    play(pbx, call.event(0, "ringing", "101"), call.event(9, "completed"))
    return OutboundJob.objects.get(crm_connection=wirecrm, kind="wirecrm.notify_start")


@pytest.mark.parametrize("status", [404, 410])
@responses.activate
def test_a_revoked_webhook_link_fails_at_once_and_flags_the_connection(pbx, wirecrm, status):
    responses.add(responses.POST, WEBHOOK_URL, status=status)
    job = start_job(pbx, wirecrm)

    deliver(wirecrm)

    job.refresh_from_db()
    wirecrm.refresh_from_db()
    assert (job.status, job.attempts, job.last_status) == (OutboundJob.FAILED, 1, status)
    assert "webhook_url" in wirecrm.last_error
    assert WEBHOOK_URL not in wirecrm.last_error and WEBHOOK_URL not in job.last_error  # the link is a secret


@responses.activate
def test_another_4xx_fails_that_message_only(pbx, wirecrm):
    responses.add(responses.POST, WEBHOOK_URL, status=400)
    job = start_job(pbx, wirecrm)

    deliver(wirecrm)

    job.refresh_from_db()
    wirecrm.refresh_from_db()
    assert (job.status, job.last_status) == (OutboundJob.FAILED, 400)
    assert wirecrm.last_error == ""


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 408},
        {"status": 429},
        {"status": 500},
        {"status": 503},
        {"body": requests.exceptions.ReadTimeout("timed out")},
    ],
)
@responses.activate
def test_timeouts_408_429_and_5xx_are_retried_later(pbx, wirecrm, failure):
    responses.add(responses.POST, WEBHOOK_URL, **failure)
    job = start_job(pbx, wirecrm)

    deliver(wirecrm)

    job.refresh_from_db()
    assert (job.status, job.attempts) == (OutboundJob.PENDING, 1)
    # ...and the call's later history message waits behind it (the card for the ended call expired).
    pending = OutboundJob.objects.filter(crm_connection=wirecrm, status=OutboundJob.PENDING)
    assert sorted(pending.values_list("kind", flat=True)) == ["wirecrm.notify_end", "wirecrm.notify_start"]


# ---- NOTIFY_START as a routing answer -------------------------------------------------------------------

ROUTED_CALL = "in_dc6a51f29dba915c0777ee818726609b8c450728"


def route(tenant, pbx, provider_call_id: str = ROUTED_CALL) -> RoutingDecision:
    return routing.resolve(
        tenant, "+79880000000", "+79191010100", provider_call_id=provider_call_id, pbx_connection=pbx
    )


def routed_call_rings_and_ends(pbx, wirecrm) -> None:
    """The routed call rings 101 (the relay runs while it rings, so the card opens), then is answered and ends."""
    call = CallScript(ROUTED_CALL, client="+79880000000", did="+79191010100")
    play(pbx, call.event(0, "ringing", "101"))
    deliver(wirecrm)
    play(pbx, call.event(3, "answered", "101"), call.event(20, "completed"))


@responses.activate
def test_notify_start_answered_with_a_caller_name_names_the_caller_and_is_not_sent_again(
    tenant, pbx, wirecrm, extensions
):
    responses.add(responses.POST, WEBHOOK_URL, json=fixture_json("wirecrm", "answer_caller_name.json"))

    decision = route(tenant, pbx)

    assert (decision.display_name, decision.source) == ("Иванов Иван", "wirecrm")
    [start] = sent_to_wirecrm()
    call_start = start.pop("call_start")
    assert start == fixture_json("wirecrm", "notify_start_routing.json")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", call_start)

    routed_call_rings_and_ends(pbx, wirecrm)
    deliver(wirecrm)

    assert [m["event"] for m in sent_to_wirecrm()] == ["NOTIFY_START", "NOTIFY_INTERNAL", "NOTIFY_END"]
    job = OutboundJob.objects.get(kind="wirecrm.notify_start")
    assert job.status == OutboundJob.SENT and job.last_response.startswith("skipped")


@responses.activate
def test_notify_start_answered_with_a_redirect_routes_to_that_extension(tenant, pbx, wirecrm, extensions):
    responses.add(responses.POST, WEBHOOK_URL, json=fixture_json("wirecrm", "answer_redirect.json"))

    decision = route(tenant, pbx)

    assert (decision.extension, decision.source) == ("101", "wirecrm")


@responses.activate
def test_a_redirect_to_something_that_is_not_an_extension_is_ignored(tenant, pbx, wirecrm, extensions):
    responses.add(responses.POST, WEBHOOK_URL, json={"redirect": "+79161234567"})

    decision = route(tenant, pbx)

    assert decision.extension == "" and decision.source == "none"


@pytest.mark.parametrize(
    "failure",
    [
        {"body": requests.exceptions.ReadTimeout("no answer within start_timeout_ms")},  # slow
        {"status": 500},  # failing
        {"status": 404},
    ],
    ids=["slow", "failing", "revoked"],
)
@responses.activate
def test_a_notify_start_without_a_2xx_in_time_is_sent_again_by_the_outbox(
    tenant, pbx, wirecrm, extensions, failure
):
    responses.add(responses.POST, WEBHOOK_URL, **failure)

    decision = route(tenant, pbx)

    assert decision.source == "none" and "wirecrm" in decision.detail["failed"]
    responses.replace(responses.POST, WEBHOOK_URL, body="")
    routed_call_rings_and_ends(pbx, wirecrm)
    deliver(wirecrm)

    events = [m["event"] for m in sent_to_wirecrm()]
    assert events == ["NOTIFY_START", "NOTIFY_START", "NOTIFY_INTERNAL", "NOTIFY_END"]


@responses.activate
def test_a_2xx_that_came_after_start_timeout_ms_does_not_count_as_sent(tenant, pbx, wirecrm, extensions):
    wirecrm.settings = {"start_timeout_ms": 100}
    wirecrm.save()

    def slow_answer(request):
        time.sleep(0.2)
        return 200, {}, '{"caller_name": "Too late"}'

    responses.add_callback(responses.POST, WEBHOOK_URL, callback=slow_answer)

    decision = route(tenant, pbx)

    assert decision.display_name == "" and "wirecrm" in decision.detail["failed"]


@responses.activate
def test_without_the_pbx_call_id_wirecrm_is_not_asked_and_the_outbox_sends_notify_start(
    tenant, pbx, wirecrm, extensions
):
    wirecrm_accepts()

    decision = routing.resolve(tenant, "+79880000000", "+79191010100", pbx_connection=pbx)

    assert len(responses.calls) == 0 and decision.detail["asked"] == []
    routed_call_rings_and_ends(pbx, wirecrm)
    deliver(wirecrm)
    assert [m["event"] for m in sent_to_wirecrm()] == ["NOTIFY_START", "NOTIFY_INTERNAL", "NOTIFY_END"]


def test_answers_routing_only_with_the_pbx_call_id(wirecrm):
    adapter = get_provider(wirecrm)
    assert not adapter.answers_routing(RoutingQuery(caller="+79880000000", did=""))
    assert adapter.answers_routing(RoutingQuery(caller="+79880000000", did="", provider_call_id="x"))


# ---- click-to-call in -----------------------------------------------------------------------------------


def make_call(client, connection, body: str, token: str | None = PBX_TOKEN):
    headers = {"HTTP_X_PBX_AUTHENTICATION": token} if token is not None else {}
    return client.post(
        f"/hooks/wirecrm/{connection.public_id}/make-call",
        body,
        content_type="application/x-www-form-urlencoded",
        **headers,
    )


@responses.activate
def test_make_call_rings_the_extension_and_answers_status_1(client, pbx, wirecrm, extensions):
    responses.add(responses.POST, f"{PBX_URL}/call", json={"id": "corr-1"})

    response = make_call(client, wirecrm, fixture_text("wirecrm", "makecall.txt"))

    assert response.status_code == 200
    assert response.json() == {"status": "1"}
    request = OriginateRequest.objects.get()
    assert (request.extension, request.phone, request.crm_connection) == ("101", "+79101234567", wirecrm)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("from=555&to=79101234567", "Внутренний номер 555 не найден в АТС"),
        ("from=101&to=12", "Номер телефона клиента указан неверно"),
        ("to=79101234567", "Не указан внутренний номер сотрудника"),
        ("from=101", "Не указан номер телефона клиента"),
    ],
)
@responses.activate
def test_a_business_failure_is_200_with_status_0_and_a_message_in_russian(
    client, pbx, wirecrm, extensions, body, error
):
    response = make_call(client, wirecrm, body)

    assert response.status_code == 200
    assert response.json() == {"status": "0", "error": error}
    assert len(responses.calls) == 0


@responses.activate
def test_a_pbx_refusing_the_call_is_200_with_status_0(client, pbx, wirecrm, extensions):
    responses.add(responses.POST, f"{PBX_URL}/call", status=400)

    response = make_call(client, wirecrm, fixture_text("wirecrm", "makecall.txt"))

    assert response.status_code == 200
    assert response.json() == {"status": "0", "error": "АТС отклонила вызов"}


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_a_bad_or_missing_token_is_401_with_status_0(client, pbx, wirecrm, extensions, token):
    response = make_call(client, wirecrm, fixture_text("wirecrm", "makecall.txt"), token=token)

    assert response.status_code == 401
    assert response.json() == {"status": "0", "error": "Invalid token"}
    assert not OriginateRequest.objects.exists()


class TestWireCrmWebhookSecurity(WebhookSecurityContract):
    failure_status = 401
    failure_body = {"status": "0", "error": "Invalid token"}
    credential_keys = ("pbx_token",)

    def make_connection(self, tenant, suffix):
        return CrmConnectionFactory(
            tenant=tenant,
            provider="wirecrm",
            secrets={"webhook_url": f"{WEBHOOK_URL}-{suffix}", "pbx_token": f"wc-{suffix}-0123456789abcdef"},
        )

    def signed_request(self, connection, secrets):
        headers = {"x-pbx-authentication": secrets["pbx_token"]} if secrets is not None else {}
        return {
            "path": f"/hooks/wirecrm/{connection.public_id}/make-call",
            "data": fixture_text("wirecrm", "makecall.txt"),
            "content_type": "application/x-www-form-urlencoded",
            "headers": headers,
        }


# ---- issue 16: NOTIFY_START's answer used and sent once; NOTIFY_INTERNAL expires --------------------------


@pytest.fixture
def fake_crm_registered(monkeypatch):
    from integrations.providers import base as providers_base
    from tests.pipeline.fake_providers import register

    register(monkeypatch, "fakecrm", "tests.pipeline.fake_providers.FakeCrm", providers_base.CRM)


def fake_crm(tenant, priority: int, answer: dict, delay: float = 0) -> Any:
    return CrmConnectionFactory(
        tenant=tenant,
        provider="fakecrm",
        key=f"fake{priority}",
        priority=priority,
        settings={"answer": answer, "delay": delay},
        secrets={},
    )


@responses.activate
def test_wirecrm_is_asked_with_the_call_id_even_when_another_crms_answer_is_cached(
    tenant, pbx, wirecrm, extensions, fake_crm_registered
):
    fake_crm(tenant, 1, {"display_name": "Cached Name"})
    responses.add(responses.POST, WEBHOOK_URL, json=fixture_json("wirecrm", "answer_redirect.json"))
    route(tenant, pbx, "first-call")  # caches both answers

    decision = route(tenant, pbx)  # a new call of the same caller, with its call id

    assert (decision.extension, decision.source, decision.display_name) == ("101", "wirecrm", "Cached Name")
    starts = [m for m in sent_to_wirecrm() if m["event"] == "NOTIFY_START"]
    assert [m["pbx_call_id"] for m in starts] == ["first-call", ROUTED_CALL]


@responses.activate
def test_wirecrms_answer_is_cached_for_the_callers_next_call(tenant, pbx, wirecrm, extensions):
    responses.add(responses.POST, WEBHOOK_URL, json=fixture_json("wirecrm", "answer_redirect.json"))
    route(tenant, pbx)

    # A question without a call id (Rostelecom's guide-shaped get_number_info) cannot send NOTIFY_START...
    decision = routing.resolve(tenant, "+79880000000", "+79191010100", pbx_connection=pbx)

    # ...but WireCRM's last answer for this caller still routes the call.
    assert (decision.extension, decision.source) == ("101", "cache")
    assert len(sent_to_wirecrm()) == 1


@responses.activate
def test_notify_start_is_sent_once_when_a_higher_priority_crm_answers_first(
    tenant, pbx, wirecrm, extensions, fake_crm_registered
):
    fake_crm(tenant, 1, {"extension": "104", "display_name": "Fast CRM"})
    wirecrm.priority = 5
    wirecrm.save()

    def slower_answer(request):
        time.sleep(0.15)  # well within start_timeout_ms, but after the faster CRM
        return 200, {}, '{"caller_name": "Иванов Иван"}'

    responses.add_callback(responses.POST, WEBHOOK_URL, callback=slower_answer)

    decision = route(tenant, pbx)

    assert (decision.extension, decision.display_name) == ("104", "Fast CRM")
    assert "wirecrm" in decision.detail["asked"] and "late" not in decision.detail
    responses.replace(responses.POST, WEBHOOK_URL, body="")
    routed_call_rings_and_ends(pbx, wirecrm)
    deliver(wirecrm)
    events = [m["event"] for m in sent_to_wirecrm()]
    assert events == ["NOTIFY_START", "NOTIFY_INTERNAL", "NOTIFY_END"]


@responses.activate
def test_notify_internal_expires_after_popup_ttl_seconds_and_the_end_still_goes_out(pbx, wirecrm):
    wirecrm.settings = {"start_timeout_ms": 700, "popup_ttl_seconds": 30}
    wirecrm.save()
    responses.add(responses.POST, WEBHOOK_URL, status=503)  # WireCRM is down while 101 rings
    script = CallScript("in-outage")
    play(pbx, script.event(0, "ringing", "101"))
    deliver(wirecrm)
    internal = OutboundJob.objects.get(kind="wirecrm.notify_internal")
    assert internal.expires_at is not None
    assert 29 <= (internal.expires_at - internal.created_at).total_seconds() <= 31

    # The outage outlasts the card's 30 seconds (moved forward here in the ledger, not by mocking time).
    OutboundJob.objects.filter(pk=internal.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    responses.replace(responses.POST, WEBHOOK_URL, body="")
    OutboundJob.objects.filter(status=OutboundJob.PENDING).update(next_attempt_at=timezone.now())
    deliver(wirecrm)
    play(pbx, script.event(40, "completed"))
    deliver(wirecrm)

    internal.refresh_from_db()
    assert internal.status == OutboundJob.EXPIRED
    delivered = [
        multipart_fields(c.request)["event"]
        for c in responses.calls
        if c.request.url == WEBHOOK_URL and getattr(c.response, "status_code", None) == 200
    ]
    assert delivered == ["NOTIFY_START", "NOTIFY_END"]


@responses.activate
def test_an_answer_to_a_notify_start_sent_by_the_outbox_routes_the_callers_next_call(
    tenant, pbx, wirecrm, extensions
):
    responses.add(responses.POST, WEBHOOK_URL, json=fixture_json("wirecrm", "answer_redirect.json"))
    call = CallScript("in-outbox", client="+79880000000", did="+79191010100")
    play(pbx, call.event(0, "ringing", "104"))
    deliver(wirecrm)  # NOTIFY_START from the outbox: the call already rings, WireCRM's redirect is too late

    decision = routing.resolve(tenant, "+79880000000", "+79191010100", pbx_connection=pbx)

    assert (decision.extension, decision.source) == ("101", "cache")
