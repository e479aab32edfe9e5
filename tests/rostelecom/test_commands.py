"""What we ask the PBX: click-to-call (call_back), a recording link (get_record), the directory (users_info);
every request signed over the exact ASCII-only bytes sent, with timeouts and TLS verification."""

from __future__ import annotations

import pytest
import requests
import responses

from calls import recordings
from calls.models import Call, OriginateRequest, OutboundJob, Recording
from calls.services import originate
from integrations.directory import import_extensions
from integrations.models import Extension
from integrations.providers.base import DirectoryEntry, ProviderError, get_provider
from integrations.providers.rostelecom.api import RostelecomError
from tests.factories import ExtensionFactory
from tests.rostelecom.conftest import API, CLIENT_ID, load, post_all, run_due, sign

pytestmark = pytest.mark.django_db

MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40


def assert_signed(request, body: bytes) -> None:
    assert request.body == body
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Client-ID"] == CLIENT_ID
    assert request.headers["X-Client-Sign"] == sign(body)


# ---------------------------------------------------------------------------------------------------------
# call_back
# ---------------------------------------------------------------------------------------------------------


@responses.activate
def test_click_to_call_rings_the_pin_and_dials_the_client_in_e164(pbx, extensions):
    responses.add(responses.POST, f"{API}/call_back", json=load("call_back_ok.json"))

    outcome = originate(pbx.tenant, "101", "8 (916) 123-45-67")

    assert outcome.ok and outcome.correlation_id == "534dbe28-d3c2-4d6e-9d0b-5a5bd6a0f0a1"
    [call] = responses.calls
    assert_signed(call.request, b'{"from_pin":"101","request_number":"+79161234567","domain":"acme.rt.ru"}')
    assert call.request.req_kwargs["timeout"] == (3.05, 8)
    assert call.request.req_kwargs["verify"] is True


@responses.activate
def test_the_events_of_a_click_to_call_attach_to_its_request(client, pbx, extensions):
    responses.add(responses.POST, f"{API}/call_back", json=load("call_back_ok.json"))
    outcome = originate(pbx.tenant, "102", "+79161234567")

    post_all(client, pbx, load("outbound_busy.json"))  # the same session_id

    call = Call.objects.get()
    assert call.originate_request == outcome.request
    assert OriginateRequest.objects.get().call == call


@responses.activate
def test_result_0_as_a_number_is_success_too(pbx, extensions):
    responses.add(
        responses.POST, f"{API}/call_back", json={"result": 0, "resultMessage": "", "session_id": "s-1"}
    )
    outcome = originate(pbx.tenant, "101", "+79161234567")
    assert outcome.ok and outcome.correlation_id == "s-1"


@pytest.mark.parametrize(
    "answer",
    [
        load("call_back_refused.json"),
        {"result": "1", "resultMessage": "ok"},
        {"resultMessage": "ok", "session_id": "s-1"},
    ],
)
@responses.activate
def test_anything_but_result_0_is_a_refusal_with_the_pbxs_message(pbx, extensions, answer):
    responses.add(responses.POST, f"{API}/call_back", json=answer)
    outcome = originate(pbx.tenant, "101", "+79161234567")
    assert not outcome.ok and outcome.code == "pbx_refused"
    assert f"Rostelecom call_back refused: {answer['resultMessage']}" in outcome.error
    assert OriginateRequest.objects.get().status == OriginateRequest.FAILED


@responses.activate
def test_a_timeout_is_pbx_unreachable(pbx, extensions):
    responses.add(responses.POST, f"{API}/call_back", body=requests.exceptions.ReadTimeout("slow"))
    outcome = originate(pbx.tenant, "101", "+79161234567")
    assert not outcome.ok and outcome.code == "pbx_unreachable"


@responses.activate
def test_a_403_from_the_pbx_is_a_refusal(pbx, extensions):
    responses.add(responses.POST, f"{API}/call_back", status=403, body="Forbidden")
    outcome = originate(pbx.tenant, "101", "+79161234567")
    assert not outcome.ok and outcome.code == "pbx_refused" and "HTTP 403" in outcome.error


@responses.activate
def test_the_sign_key_never_appears_in_an_error(pbx, extensions):
    responses.add(responses.POST, f"{API}/call_back", status=500, body=f"echo {pbx.secrets['sign_key']}")
    outcome = originate(pbx.tenant, "101", "+79161234567")
    assert pbx.secrets["sign_key"] not in outcome.error
    assert pbx.secrets["sign_key"] not in OriginateRequest.objects.get().error


# ---------------------------------------------------------------------------------------------------------
# get_record
# ---------------------------------------------------------------------------------------------------------


def recorded_call(pbx) -> Recording:
    call = Call.objects.create(
        tenant=pbx.tenant, pbx_connection=pbx, provider_call_id="SDsnZugDFmTW7Sec", direction="in"
    )
    return Recording.objects.create(call=call, hints={"session_id": "SDsnZugDFmTW7Sec"})


@responses.activate
def test_a_recording_link_is_asked_for_the_session_bound_to_record_ip(pbx):
    pbx.settings = {**pbx.settings, "record_ip": "188.254.33.84"}
    pbx.save()
    responses.add(responses.POST, f"{API}/get_record", json=load("get_record.json"))

    link = get_provider(pbx).recording_link(recorded_call(pbx))

    assert link == load("get_record.json")["url"]
    assert_signed(
        responses.calls[0].request,
        b'{"session_id":"SDsnZugDFmTW7Sec","ip_adress":"188.254.33.84","domain":"acme.rt.ru"}',
    )
    assert responses.calls[0].request.req_kwargs["timeout"] == (3.05, 10)


@responses.activate
def test_without_record_ip_no_ip_adress_is_sent(pbx):
    responses.add(responses.POST, f"{API}/get_record", json=load("get_record.json"))
    get_provider(pbx).recording_link(recorded_call(pbx))
    assert responses.calls[0].request.body == b'{"session_id":"SDsnZugDFmTW7Sec","domain":"acme.rt.ru"}'


@responses.activate
def test_a_recording_not_ready_yet_is_a_transient_error(pbx):
    responses.add(
        responses.POST, f"{API}/get_record", json={"result": "1", "resultMessage": "file not found"}
    )
    with pytest.raises(RostelecomError, match="file not found") as raised:
        get_provider(pbx).recording_link(recorded_call(pbx))
    assert raised.value.permanent is False


@responses.activate
def test_the_recording_fetch_job_asks_for_a_fresh_link_then_downloads_it(
    client, pbx, extensions, settings, tmp_path
):
    settings.STORAGES = {
        **settings.STORAGES,
        "recordings": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path},
        },
    }
    url = load("get_record.json")["url"]
    responses.add(responses.POST, f"{API}/call_info", json=load("call_info_incoming_answered.json"))
    responses.add(responses.POST, f"{API}/get_record", json=load("get_record.json"))
    responses.add(responses.GET, url, body=MP3, content_type="audio/mpeg")
    post_all(client, pbx, load("incoming_answered.json"))

    run_due()  # call_info → final → recording expected
    run_due()  # recording.fetch

    recording = Recording.objects.get()
    assert recording.state == Recording.STORED and recording.size == len(MP3)
    assert [c.request.url for c in responses.calls] == [f"{API}/call_info", f"{API}/get_record", url]
    assert responses.calls[1].request.body == b'{"session_id":"SDsnZugDFmTW7Sec","domain":"acme.rt.ru"}'
    assert recordings.storage().exists(recording.file)
    assert OutboundJob.objects.get(kind="recording.fetch").status == OutboundJob.SENT


# ---------------------------------------------------------------------------------------------------------
# users_info and the directory import
# ---------------------------------------------------------------------------------------------------------


@responses.activate
def test_the_directory_is_the_domains_users(pbx):
    responses.add(responses.POST, f"{API}/users_info", json=load("users_info.json"))

    entries = get_provider(pbx).list_extensions()

    assert entries == [
        DirectoryEntry("101", "test_user_1", "test_user_1@mail.gov"),
        DirectoryEntry("102", "test_user_2", ""),
    ]
    assert_signed(responses.calls[0].request, b'{"domain":"acme.rt.ru"}')


@responses.activate
def test_a_refused_directory_request_is_a_permanent_error_with_the_pbxs_message(pbx):
    responses.add(responses.POST, f"{API}/users_info", json={"result": -1, "resultMessage": "Access denied"})
    with pytest.raises(ProviderError, match="Access denied") as raised:
        get_provider(pbx).list_extensions()
    assert raised.value.permanent


@responses.activate
def test_import_creates_and_updates_extensions_and_reports_what_changed(pbx):
    ExtensionFactory(tenant=pbx.tenant, number="101", name="Old name", email="old@example.test")
    ExtensionFactory(tenant=pbx.tenant, number="555", name="Typed in")
    responses.add(responses.POST, f"{API}/users_info", json=load("users_info.json"))

    report = import_extensions(pbx)

    assert {k: report[k] for k in ("created", "updated", "unchanged", "skipped")} == {
        "created": 1,
        "updated": 1,
        "unchanged": 0,
        "skipped": 0,
    }
    assert (report["created_numbers"], report["updated_numbers"]) == (["102"], ["101"])
    assert list(Extension.objects.filter(tenant=pbx.tenant).values_list("number", "name", "email")) == [
        ("101", "test_user_1", "test_user_1@mail.gov"),
        ("102", "test_user_2", ""),
        ("555", "Typed in", "e555@example.test"),
    ]

    again = import_extensions(pbx)
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 2)


@responses.activate
def test_import_changes_nothing_when_the_pbx_cannot_be_asked(pbx):
    responses.add(responses.POST, f"{API}/users_info", body=requests.exceptions.ConnectTimeout("slow"))
    with pytest.raises(Exception, match="timed out"):
        import_extensions(pbx)
    assert not Extension.objects.exists()
