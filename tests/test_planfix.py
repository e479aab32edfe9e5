"""Planfix: click-to-call and other commands in, caller lookup, call events with the exact statuses, delayed
record links and analytics fields out. Planfix's side is faked with `responses`; the pipeline runs for real."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

import pytest
import requests
import responses

from calls import routing
from calls.models import Call, OriginateRequest, OutboundJob
from calls.processor import ingest
from integrations.http import OutboundError
from integrations.providers.base import Notice, RoutingQuery, SchemaError, get_provider
from integrations.providers.planfix import PlanfixProvider
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
from tests.factories import (
    CrmConnectionFactory,
    ExtensionFactory,
    ExternalPhoneFactory,
    PbxConnectionFactory,
    TenantFactory,
)
from tests.webhook_security import WebhookSecurityContract

pytestmark = pytest.mark.django_db

PLANFIX_URL = "https://acme.planfix.ru/tel/api"
# The tokens of the seed's examples: Planfix's own, and the one the portal issued to Planfix.
PLANFIX_TOKEN = "303cb962ac59075b964b07152d234b70"


def seed_form(name: str) -> dict:
    """The seed's example request, plus `token`: the portal sends the Planfix token under both names the
    documentation uses (issue 16 item 12)."""
    return {**form(fixture_text("planfix", name)), "token": PLANFIX_TOKEN}


PBX_TOKEN = "202cb962ac59075b964b07152d234b70"
SEED_CALL_ID = "D10D0EB124F4E64AF4EA-1511"


@pytest.fixture(autouse=True)
def fake_pbx_registered(monkeypatch):
    register_fake_pbx(monkeypatch)


@pytest.fixture
def tenant(db):
    return TenantFactory(slug="acme")


@pytest.fixture
def pbx(tenant):
    return PbxConnectionFactory(
        tenant=tenant, provider="fakepbx", settings={"api_url": PBX_URL}, secrets={"token": "pbx-token-123"}
    )


@pytest.fixture
def planfix(tenant):
    return CrmConnectionFactory(
        tenant=tenant,
        provider="planfix",
        settings={"api_url": PLANFIX_URL, "analytics": {}},
        secrets={"planfix_token": PLANFIX_TOKEN, "pbx_token": PBX_TOKEN},
    )


@pytest.fixture
def extensions(tenant):
    return [ExtensionFactory(tenant=tenant, number=n) for n in ("101", "102", "103")]


def hook_url(connection) -> str:
    return f"/hooks/planfix/{connection.public_id}/"


def post_form(client, connection, body: str):
    return client.post(hook_url(connection), body, content_type="application/x-www-form-urlencoded")


def form(text: str) -> dict[str, str]:
    return dict(parse_qsl(text, keep_blank_values=True))


def planfix_accepts() -> None:
    responses.add(responses.POST, PLANFIX_URL, json={}, status=200)


def sent_to_planfix() -> list[dict[str, str]]:
    return [form(c.request.body) for c in responses.calls if c.request.url == PLANFIX_URL]


def events_sent() -> list[tuple[str, str, str]]:
    """(event, ext, status) of every `event` message, in the order sent."""
    return [
        (m["event"], m.get("ext", ""), m.get("status", "")) for m in sent_to_planfix() if m["cmd"] == "event"
    ]


def nothing_stored() -> bool:
    return not (OriginateRequest.objects.exists() or OutboundJob.objects.exists())


# ---- inbound: makeCall and other commands ---------------------------------------------------------------


@responses.activate
def test_the_seeds_make_call_rings_the_extension_and_answers_200_with_json(client, planfix, pbx, extensions):
    responses.add(responses.POST, f"{PBX_URL}/call", json={"id": "corr-1"})

    response = post_form(client, planfix, fixture_text("planfix", "makecall.txt"))

    assert response.status_code == 200
    assert response.json() == {}
    request = OriginateRequest.objects.get()
    assert (request.extension, request.phone, request.crm_connection, request.status) == (
        "101",
        "+79101234567",
        planfix,
        OriginateRequest.OK,
    )


@responses.activate
def test_make_call_accepts_an_extension_written_with_a_sip_domain(client, planfix, pbx, extensions):
    responses.add(responses.POST, f"{PBX_URL}/call", json={"id": "corr-2"})

    body = f"cmd=makeCall&from=102%40pbx.acme.local&to=8+%28910%29+123-45-67&token={PBX_TOKEN}"
    response = post_form(client, planfix, body)

    assert response.status_code == 200
    assert OriginateRequest.objects.get().extension == "102"


def test_a_bad_token_is_401_even_when_the_rest_is_invalid_too(client, planfix, pbx, extensions):
    response = post_form(client, planfix, "cmd=makeCall&from=101&token=wrong-token")

    assert response.status_code == 401
    assert response.json() == fixture_json("planfix", "error_invalid_token.json")
    assert nothing_stored()


@pytest.mark.parametrize(
    "body",
    [
        "cmd=makeCall&from=101",  # no `to`
        "cmd=makeCall&to=79101234567",  # no `from`
        "cmd=makeCall&from=manager&to=79101234567",  # `from` is not an extension
        "cmd=makeCall&from=555&to=79101234567",  # an extension the PBX does not have
        "cmd=makeCall&from=101&to=not-a-number",
        "from=101&to=79101234567",  # no `cmd`
    ],
)
@responses.activate
def test_missing_or_unusable_parameters_are_400_and_the_pbx_is_not_asked(
    client, planfix, pbx, extensions, body
):
    response = post_form(client, planfix, f"{body}&token={PBX_TOKEN}")

    assert response.status_code == 400
    assert response.json() == fixture_json("planfix", "error_invalid_parameters.json")
    assert len(responses.calls) == 0
    assert not OriginateRequest.objects.filter(status=OriginateRequest.OK).exists()


@responses.activate
def test_a_pbx_refusing_the_call_is_502_with_a_clear_message(client, planfix, pbx, extensions):
    responses.add(responses.POST, f"{PBX_URL}/call", status=400)

    response = post_form(client, planfix, fixture_text("planfix", "makecall.txt"))

    assert response.status_code == 502
    assert response.json()["error"].startswith("The PBX refused the call")


@responses.activate
def test_an_unreachable_pbx_is_502_with_a_clear_message(client, planfix, pbx, extensions):
    responses.add(responses.POST, f"{PBX_URL}/call", body=requests.ConnectionError("connection refused"))

    response = post_form(client, planfix, fixture_text("planfix", "makecall.txt"))

    assert response.status_code == 502
    assert response.json() == {"error": "The PBX could not be reached; try again in a minute"}


def test_a_tenant_without_a_pbx_is_502(client, planfix, extensions):
    response = post_form(client, planfix, fixture_text("planfix", "makecall.txt"))

    assert response.status_code == 502
    assert "No PBX" in response.json()["error"]


def test_an_unknown_command_with_a_valid_token_is_answered_200_and_logged(client, planfix, caplog):
    with caplog.at_level(logging.INFO, logger="callbridge.planfix"):
        response = post_form(client, planfix, f"cmd=activate&pbxUrl=https%3A%2F%2Fx.test&token={PBX_TOKEN}")

    assert response.status_code == 200
    assert response.json() == {}
    assert "'activate'" in caplog.text
    assert PBX_TOKEN not in caplog.text
    assert nothing_stored()


def test_an_unknown_command_with_a_bad_token_is_401(client, planfix):
    response = post_form(client, planfix, "cmd=activate&token=not-the-token")

    assert response.status_code == 401
    assert response.json() == {"error": "Invalid token"}


def test_the_token_is_read_from_the_form_body_urlencoded_or_multipart(client, planfix):
    response = client.post(
        hook_url(planfix) + f"?token={PBX_TOKEN}", '{"cmd": "makeCall"}', content_type="application/json"
    )

    assert response.status_code == 401  # the token is only read from the form body

    response = client.post(
        hook_url(planfix),
        {"cmd": "makeCall", "from": "101", "token": PBX_TOKEN},  # multipart: accepted as a form too
    )
    assert response.status_code == 400
    assert response.json() == {"error": "Invalid parameters"}


class TestPlanfixWebhookSecurity(WebhookSecurityContract):
    failure_status = 401
    failure_body = {"error": "Invalid token"}
    credential_keys = ("pbx_token",)

    def make_connection(self, tenant, suffix):
        return CrmConnectionFactory(
            tenant=tenant,
            provider="planfix",
            secrets={"planfix_token": f"pf-out-{suffix}", "pbx_token": f"pf-in-{suffix}-0123456789abcdef"},
        )

    def signed_request(self, connection, secrets):
        # A command the portal only acknowledges: the contract's accepted request must store nothing either.
        data = {"cmd": "activate"}
        if secrets is not None:
            data["token"] = secrets["pbx_token"]
        return {
            "path": hook_url(connection),
            "data": "&".join(f"{k}={v}" for k, v in data.items()),
            "content_type": "application/x-www-form-urlencoded",
        }


# ---- routing: contact ------------------------------------------------------------------------------------


@responses.activate
def test_contact_sends_the_seeds_request_and_routes_to_the_responsible_employee(
    tenant, planfix, pbx, extensions
):
    responses.add(responses.POST, PLANFIX_URL, json=fixture_json("planfix", "contact_response.json"))

    decision = routing.resolve(
        tenant,
        "+79101234567",
        "+74951234567",
        provider_call_id="D12D0EB124F4E64AF4EA-1511",
        pbx_connection=pbx,
    )

    assert sent_to_planfix() == [seed_form("contact.txt")]
    assert (decision.extension, decision.display_name, decision.source) == (
        "103",
        "Иванов Иван Иванович",
        "planfix",
    )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"contact_name": "ООО Ромашка", "responsible": "102"}, ("102", "ООО Ромашка")),
        ({"contact_name": "ООО Ромашка"}, ("", "ООО Ромашка")),  # no responsible employee
        ({"contact_name": "ООО Ромашка", "responsible": "Иван"}, ("", "ООО Ромашка")),  # not an extension
        ({"responsible": 101}, ("101", "")),
        ({}, None),
    ],
)
@responses.activate
def test_contact_takes_responsible_as_a_number_or_a_string_and_it_may_be_absent(planfix, answer, expected):
    responses.add(responses.POST, PLANFIX_URL, json=answer)

    found = get_provider(planfix).lookup(RoutingQuery(caller="+79101234567", did=""), 1.0)

    if expected is None:
        assert found is None
    else:
        assert (found.extension, found.display_name) == expected
    assert "callid" not in sent_to_planfix()[0]  # no PBX call id, no callid


@responses.activate
def test_a_number_planfix_refuses_to_look_up_is_no_match_but_a_bad_token_is_a_failure(planfix):
    query = RoutingQuery(caller="+79101234567", did="")
    responses.add(responses.POST, PLANFIX_URL, status=404)
    assert get_provider(planfix).lookup(query, 1.0) is None

    responses.replace(responses.POST, PLANFIX_URL, status=401, json={"error": "Invalid token"})
    with pytest.raises(OutboundError, match="401"):
        get_provider(planfix).lookup(query, 1.0)


# ---- events ----------------------------------------------------------------------------------------------


@responses.activate
def test_the_seeds_completed_event_carries_diversion_and_the_analytics_fields(tenant, planfix, pbx, settings):
    planfix.settings = {
        "api_url": PLANFIX_URL,
        "analytics": {"utm_source": "site.io", "utm_medium": "banner"},
    }
    planfix.save()
    planfix_accepts()
    call = CallScript(SEED_CALL_ID, direction="out")

    play(pbx, call.event(1, "ringing", "102"), call.event(6, "answered", "102"))
    deliver(planfix)
    play(pbx, call.event(130, "completed", recorded=True))
    deliver(planfix)

    assert events_sent() == [
        ("OUTGOING", "102", ""),
        ("ACCEPTED", "102", ""),
        ("COMPLETED", "102", "Success"),
    ]
    assert sent_to_planfix()[-1] == seed_form("event_completed.txt")


@responses.activate
def test_the_seeds_record_message_follows_with_the_permanent_link(tenant, planfix, pbx, settings):
    settings.PUBLIC_BASE_URL = "https://portal.example.test"
    planfix_accepts()
    script = CallScript(SEED_CALL_ID, direction="out")
    call = play(
        pbx,
        script.event(1, "ringing", "102"),
        script.event(6, "answered", "102"),
        script.event(130, "completed", recorded=True),
    )
    deliver(planfix)
    assert sent_to_planfix()[-1]["is_recorded"] == "1"
    assert "record_link" not in sent_to_planfix()[-1]

    recording = store_recording(call)
    deliver(planfix)

    # The seed's link, with the token the portal derives for this recording (issue 15: HMAC, not stored).
    expected = seed_form("record.txt")
    expected["record_link"] = expected["record_link"].replace(
        "d3cfd85e3102ec7-permanent-link-token", recording.token
    )
    assert sent_to_planfix()[-1] == expected


OUTGOING_STATUSES = [
    ("answered", "Success"),
    ("busy", "Busy"),
    ("no_answer", "NoAnswer"),
    ("not_available", "NotAvailable"),
    ("not_allowed", "NotAllowed"),
    ("failed", "NotAvailable"),
]


@pytest.mark.parametrize(("outcome", "status"), OUTGOING_STATUSES)
@responses.activate
def test_every_outgoing_result_has_its_planfix_status(planfix, pbx, outcome, status):
    planfix_accepts()
    call = CallScript("out-1", direction="out")
    play(pbx, call.event(1, "ringing", "101"))
    deliver(planfix)
    play(pbx, call.event(20, "completed", outcome=outcome))
    deliver(planfix)

    [outgoing, completed] = sent_to_planfix()
    assert (outgoing["type"], outgoing["event"], outgoing["ext"]) == ("out", "OUTGOING", "101")
    assert (completed["type"], completed["event"], completed["status"]) == ("out", "COMPLETED", status)


@pytest.mark.parametrize(
    ("outcome", "status", "duration"),
    [("answered", "Success", "14"), ("missed", "Missed", "0"), ("cancelled", "Missed", "0")],
)
@responses.activate
def test_every_incoming_result_has_its_planfix_status(planfix, pbx, outcome, status, duration):
    planfix_accepts()
    call = CallScript("in-1")
    play(pbx, call.event(1, "ringing", "101"))
    deliver(planfix)
    if outcome == "answered":
        play(pbx, call.event(6, "answered", "101"))
        deliver(planfix)
    play(pbx, call.event(20, "completed", outcome=outcome))
    deliver(planfix)

    completed = sent_to_planfix()[-1]
    assert (completed["type"], completed["event"], completed["ext"]) == ("in", "COMPLETED", "101")
    assert (completed["status"], completed["duration"], completed["is_recorded"]) == (status, duration, "0")


@responses.activate
def test_a_ring_group_of_three_with_one_answer_closes_the_colleagues_cards(planfix, pbx):
    planfix_accepts()
    call = CallScript("in-group")

    play(
        pbx, call.event(1, "ringing", "101"), call.event(2, "ringing", "102"), call.event(3, "ringing", "103")
    )
    deliver(planfix)
    play(pbx, call.event(8, "answered", "102"))
    deliver(planfix)
    play(pbx, call.event(68, "completed", recorded=True))
    deliver(planfix)

    assert events_sent() == [
        ("INCOMING", "101", ""),
        ("INCOMING", "102", ""),
        ("INCOMING", "103", ""),
        ("ACCEPTED", "102", ""),
        ("COMPLETED", "101", "Cancelled"),
        ("COMPLETED", "103", "Cancelled"),
        ("COMPLETED", "102", "Success"),
    ]
    messages = sent_to_planfix()
    assert all(m["planfix_token"] == PLANFIX_TOKEN for m in messages)
    assert all(m["callid"] == "in-group" and m["phone"] == "79101234567" for m in messages)
    assert all(m["diversion"] == "74951234567" for m in messages)
    colleague, answered = messages[4], messages[6]
    assert (colleague["duration"], colleague["is_recorded"]) == ("0", "0")
    assert (answered["duration"], answered["is_recorded"]) == ("60", "1")


@responses.activate
def test_when_nobody_answers_every_ringing_extension_gets_one_missed_completion(planfix, pbx):
    planfix_accepts()
    call = CallScript("in-missed")
    play(pbx, call.event(1, "ringing", "101"), call.event(2, "ringing", "102"))
    deliver(planfix)
    play(pbx, call.event(30, "completed"))
    deliver(planfix)

    completions = [e for e in events_sent() if e[0] == "COMPLETED"]
    assert sorted(completions) == [("COMPLETED", "101", "Missed"), ("COMPLETED", "102", "Missed")]


@responses.activate
def test_pop_ups_of_a_call_that_already_ended_are_never_sent(planfix, pbx):
    planfix_accepts()
    call = CallScript("in-late")
    play(pbx, call.event(1, "ringing", "101"), call.event(5, "answered", "101"), call.event(9, "completed"))

    deliver(planfix)

    assert events_sent() == [("COMPLETED", "101", "Success")]
    assert set(OutboundJob.objects.filter(kind="planfix.popup").values_list("status", flat=True)) == {
        "expired"
    }


@responses.activate
def test_analytics_fields_name_call_attributes_or_fixed_text(tenant, planfix, pbx):
    ExternalPhoneFactory(tenant=tenant, number="+74951234567", label="Сайт")
    planfix.settings = {
        "api_url": PLANFIX_URL,
        "analytics": {
            "line": "external_phone_label",
            "who": "responsible_extension",
            "source": "call centre",
        },
    }
    planfix.save()
    planfix_accepts()
    call = CallScript("in-analytics")
    play(pbx, call.event(1, "ringing", "101"), call.event(3, "answered", "101"), call.event(9, "completed"))

    deliver(planfix)

    completed = sent_to_planfix()[-1]
    assert {k: v for k, v in completed.items() if k.startswith("data_")} == {
        "data_line": "Сайт",
        "data_who": "101",
        "data_source": "call centre",
    }


def test_analytics_field_names_are_planfix_names_without_the_data_prefix():
    cleaned = PlanfixProvider.clean_settings({"api_url": PLANFIX_URL, "analytics": {"data_utm_source": "x"}})
    assert cleaned["analytics"] == {"utm_source": "x"}
    with pytest.raises(SchemaError, match="analytics"):
        PlanfixProvider.clean_settings({"api_url": PLANFIX_URL, "analytics": {" ": "x"}})


@responses.activate
def test_internal_calls_are_not_sent_to_planfix(planfix, pbx):
    call = CallScript("int-1", direction="internal")
    play(pbx, call.event(1, "ringing", "101"), call.event(5, "completed"))
    assert not OutboundJob.objects.filter(crm_connection=planfix).exists()
    assert get_provider(planfix).jobs_for(Call.objects.get(), [Notice("completed", "1", "101")]) == []


# ---- errors from Planfix --------------------------------------------------------------------------------


def completed_job(planfix, pbx) -> OutboundJob:
    call = CallScript("in-err")
    ingest(pbx, [call.event(1, "ringing", "101"), call.event(9, "completed")])
    OutboundJob.objects.filter(kind="planfix.popup").delete()
    return OutboundJob.objects.get(crm_connection=planfix, kind="planfix.completed")


@responses.activate
def test_planfix_answering_401_fails_the_message_and_flags_the_connection(planfix, pbx):
    responses.add(responses.POST, PLANFIX_URL, status=401, json={"error": "Invalid token"})
    job = completed_job(planfix, pbx)

    deliver(planfix)

    job.refresh_from_db()
    planfix.refresh_from_db()
    assert (job.status, job.attempts, job.last_status) == (OutboundJob.FAILED, 1, 401)
    assert "planfix_token" in planfix.last_error and planfix.last_error_at is not None


@responses.activate
def test_planfix_answering_400_fails_that_message_only_and_logs_it_without_the_token(planfix, pbx, caplog):
    responses.add(responses.POST, PLANFIX_URL, status=400, json={"error": "Invalid parameters"})
    job = completed_job(planfix, pbx)

    with caplog.at_level(logging.INFO):
        deliver(planfix)

    job.refresh_from_db()
    planfix.refresh_from_db()
    assert (job.status, job.last_status) == (OutboundJob.FAILED, 400)
    assert planfix.last_error == ""
    assert "'status': 'Missed'" in caplog.text  # the refused message is in the log...
    assert PLANFIX_TOKEN not in caplog.text  # ...without the token


@pytest.mark.parametrize(
    "failure", [{"status": 503}, {"status": 500}, {"body": requests.exceptions.ConnectTimeout("timed out")}]
)
@responses.activate
def test_planfix_timeouts_and_5xx_are_retried_later(planfix, pbx, failure):
    responses.add(responses.POST, PLANFIX_URL, **failure)
    job = completed_job(planfix, pbx)

    deliver(planfix)

    job.refresh_from_db()
    assert (job.status, job.attempts) == (OutboundJob.PENDING, 1)
    assert job.next_attempt_at > job.created_at


@responses.activate
def test_every_message_to_planfix_carries_the_token_as_planfix_token_and_as_token(
    tenant, planfix, pbx, extensions, settings
):
    """Issue 16 item 12: seed 000's prose says "token", its tables and examples "planfix_token"; both go."""
    settings.PUBLIC_BASE_URL = "https://portal.example.test"
    planfix_accepts()
    routing.resolve(tenant, "+79101234567", "", provider_call_id=SEED_CALL_ID, pbx_connection=pbx)
    script = CallScript(SEED_CALL_ID)
    call = play(
        pbx,
        script.event(1, "ringing", "101"),
        script.event(6, "answered", "101"),
        script.event(60, "completed", recorded=True),
    )
    deliver(planfix)
    store_recording(call)
    deliver(planfix)

    sent = sent_to_planfix()
    assert {m["cmd"] for m in sent} == {"contact", "event", "record"}
    assert all(m["planfix_token"] == m["token"] == PLANFIX_TOKEN for m in sent)
