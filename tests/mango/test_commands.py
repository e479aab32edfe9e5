"""Requests to Mango: exact signed forms, local validation, result codes and HTTP error shapes."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

import pytest
import responses

from calls.models import Call, CallEvent, OriginateRequest, Recording
from calls.services import originate
from integrations.directory import import_extensions
from integrations.models import Extension
from integrations.providers.base import ProviderError, get_provider
from integrations.providers.mango.wire import describe, is_success, sign
from tests.factories import PbxConnectionFactory
from tests.mango.support import API_KEY, API_URL, deliver, form, load, notices

pytestmark = pytest.mark.django_db


@pytest.fixture
def mocked():
    with responses.RequestsMock() as rsps:
        yield rsps


@pytest.fixture
def nothing_sent():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps
        assert len(rsps.calls) == 0


def sent_json(call) -> dict:
    return json.loads(dict(parse_qsl(call.request.body))["json"])


# ---------------------------------------------------------------------------------------------------------
# Signing
# ---------------------------------------------------------------------------------------------------------


def test_the_sign_is_plain_sha256_of_key_json_and_salt_not_an_hmac():
    text = '{"command_id":"cb-1","from":{"extension":"101"},"to_number":"79161234567"}'
    assert sign("key", text, "salt") == "e9cc0cabf6ec628c6c9c3876384819cf38936e78c9d90a813392b072b76acffc"


def test_result_codes_are_read_by_class():
    assert describe(1000) == "success" and is_success(1001) and is_success(1090)
    assert describe(2219) == "access limited"  # 2219 → 2210 → 2200
    assert describe(3102) == "signature mismatch"
    assert describe(5099) == "server error"
    assert not is_success(1100)


# ---------------------------------------------------------------------------------------------------------
# Click-to-call
# ---------------------------------------------------------------------------------------------------------


def test_click_to_call_sends_a_signed_callback_and_the_legs_attach_to_its_request(
    client, mocked, tenant, pbx, crm, extensions
):
    mocked.add(responses.POST, f"{API_URL}/commands/callback", json={"result": 1000})
    outcome = originate(
        tenant, "101", "8 (916) 123-45-67", crm_connection=crm, external_phone="+7 495 123-45-67"
    )

    assert outcome.ok and outcome.correlation_id.startswith("cb-")
    expected_json = '{"command_id":"CID","from":{"extension":"101"},"to_number":"79161234567","line_number":"74951234567"}'.replace(
        "CID", outcome.correlation_id
    )
    request = mocked.calls[0].request
    assert request.body == form(expected_json)
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"

    deliver(client, pbx, load("outbound_callback.json", command_id=outcome.correlation_id)["webhooks"])
    call = Call.objects.get()
    assert (call.direction, call.result, call.initiating_extension) == ("out", "answered", "101")
    assert call.client_phone == "+79161234567"
    assert call.answered_extensions == ["101"]
    assert call.wait_seconds == 11  # the client answered 11 s after the employee's phone started ringing
    assert call.originate_request_id == outcome.request.pk
    assert OriginateRequest.objects.get().call == call
    assert CallEvent.objects.filter(
        call=call, dedupe_key=f"result:result/callback:{outcome.correlation_id}"
    ).exists()
    assert call.final_for_crm and call.recording.hints == {"recording_id": "MToxMDA1NzU5MzpyZWM6Mg=="}
    # The CRM hears an outgoing call by 101: no incoming pop-up for the leg that rang the employee.
    assert notices(crm) == {
        "dialing:101": "fake.popup",
        "answered:101": "fake.popup",
        "completed:101": "fake.final",
    }


def test_a_callback_refused_by_mango_is_a_refusal_for_the_crm(mocked, tenant, pbx, extensions):
    mocked.add(responses.POST, f"{API_URL}/commands/callback", json={"result": 3100})
    outcome = originate(tenant, "101", "+79161234567")
    assert (outcome.ok, outcome.code) == (False, "pbx_refused")
    assert "3100" in outcome.error
    assert OriginateRequest.objects.get().status == OriginateRequest.FAILED


def test_a_callback_while_mango_is_unavailable_is_unreachable_not_refused(mocked, tenant, pbx, extensions):
    mocked.add(responses.POST, f"{API_URL}/commands/callback", status=503, body="")
    outcome = originate(tenant, "101", "+79161234567")
    assert (outcome.ok, outcome.code) == (False, "pbx_unreachable")


def test_an_invalid_callback_is_refused_locally_and_never_reaches_mango(nothing_sent, tenant, pbx):
    request = OriginateRequest.objects.create(
        tenant=tenant, pbx_connection=pbx, extension="10a", phone="+79161234567"
    )
    with pytest.raises(ProviderError) as exc:
        get_provider(pbx).originate(request)
    assert exc.value.permanent and "from.extension" in str(exc.value)


def test_a_connection_without_a_salt_refuses_locally_and_flags_the_connection(nothing_sent, tenant):
    pbx = PbxConnectionFactory(tenant=tenant, provider="mango", settings={}, secrets={"api_key": API_KEY})
    request = OriginateRequest.objects.create(
        tenant=tenant, pbx_connection=pbx, extension="101", phone="+79161234567"
    )
    with pytest.raises(ProviderError) as exc:
        get_provider(pbx).originate(request)
    assert exc.value.permanent and exc.value.flag_connection


# ---------------------------------------------------------------------------------------------------------
# Error shapes
# ---------------------------------------------------------------------------------------------------------


def _callback_error(mocked, pbx, tenant, **reply) -> ProviderError:
    mocked.add(responses.POST, f"{API_URL}/commands/callback", **reply)
    request = OriginateRequest.objects.create(
        tenant=tenant, pbx_connection=pbx, extension="101", phone="+79161234567"
    )
    with pytest.raises(ProviderError) as exc:
        get_provider(pbx).originate(request)
    return exc.value


def test_the_2017_error_shape_http_420_with_a_code_is_read_by_its_code(mocked, tenant, pbx):
    error = _callback_error(mocked, pbx, tenant, status=420, json={"code": 3104, "message": "bad format"})
    assert error.permanent and error.status == 420 and "3104" in str(error)


def test_the_newer_error_shape_is_read_by_its_code(mocked, tenant, pbx):
    error = _callback_error(mocked, pbx, tenant, status=400, json={"result": 3103, "message": "missing"})
    assert error.permanent and "required parameter missing" in str(error)


def test_http_429_backs_off(mocked, tenant, pbx):
    body = {"name": "Service Unavailable", "message": "Rate limit exceeded.", "code": 0, "status": 429}
    error = _callback_error(mocked, pbx, tenant, status=429, json=body)
    assert not error.permanent and error.retry_after >= 2


def test_result_5008_backs_off(mocked, tenant, pbx):
    error = _callback_error(mocked, pbx, tenant, json={"result": 5008})
    assert not error.permanent and error.retry_after >= 60


def test_a_sign_mismatch_is_permanent_and_shown_to_the_admin(mocked, tenant, pbx):
    error = _callback_error(mocked, pbx, tenant, json={"result": 3102})
    assert error.permanent and error.flag_connection


def test_a_401_lockout_is_retried_later_and_shown_to_the_admin(mocked, tenant, pbx):
    error = _callback_error(mocked, pbx, tenant, status=401, body="")
    assert not error.permanent and error.retry_after == 120
    pbx.refresh_from_db()
    assert "401" in pbx.last_error


# ---------------------------------------------------------------------------------------------------------
# Recordings
# ---------------------------------------------------------------------------------------------------------


def _recording(tenant, pbx, hints) -> Recording:
    call = Call.objects.create(tenant=tenant, pbx_connection=pbx, provider_call_id="E-rec")
    return Recording.objects.create(call=call, hints=hints)


def test_the_recording_link_is_the_temporary_location_mango_redirects_to(mocked, tenant, pbx):
    link = "https://files.mango-office.ru/download/abc?expires=1732440000&s=0f"
    mocked.add(responses.POST, f"{API_URL}/queries/recording/post", status=302, headers={"Location": link})
    recording = _recording(tenant, pbx, {"recording_id": "UmVjLTE="})

    assert get_provider(pbx).recording_link(recording) == link
    assert len(mocked.calls) == 1  # read, not followed: the link is single-use
    assert mocked.calls[0].request.body == form('{"recording_id":"UmVjLTE=","action":"download"}')


def test_a_recording_not_written_yet_is_retried(mocked, tenant, pbx):
    mocked.add(responses.POST, f"{API_URL}/queries/recording/post", json={"result": 3320})
    with pytest.raises(ProviderError) as exc:
        get_provider(pbx).recording_link(_recording(tenant, pbx, {"recording_id": "UmVjLTE="}))
    assert not exc.value.permanent


def test_a_call_without_a_recording_id_cannot_be_fetched(nothing_sent, tenant, pbx):
    with pytest.raises(ProviderError) as exc:
        get_provider(pbx).recording_link(_recording(tenant, pbx, {}))
    assert exc.value.permanent


# ---------------------------------------------------------------------------------------------------------
# Directory
# ---------------------------------------------------------------------------------------------------------


def test_extensions_are_imported_from_the_mango_directory(mocked, tenant, pbx):
    mocked.add(responses.POST, f"{API_URL}/config/users/request", json=load("users.json"))
    report = import_extensions(pbx)

    assert mocked.calls[0].request.body == form("{}")
    assert (report["created"], report["skipped"]) == (2, 0)
    assert list(Extension.objects.values_list("number", "name", "email")) == [
        ("101", "Иван Петров", "ivan@acme.test"),
        ("102", "Olga Smirnova", "olga@acme.test"),
    ]


def test_a_second_directory_request_within_two_seconds_is_refused_before_mango_sees_it(mocked, tenant, pbx):
    mocked.add(responses.POST, f"{API_URL}/config/users/request", json={"users": []})
    assert get_provider(pbx).list_extensions() == []
    with pytest.raises(ProviderError) as exc:
        get_provider(pbx).list_extensions()
    assert not exc.value.permanent and len(mocked.calls) == 1
