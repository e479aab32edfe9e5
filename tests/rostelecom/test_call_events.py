"""call_events → normalised events → Calls: every direction, transfers, duplicates, reordering, bad input."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import responses

from calls.models import Call, CallEvent, OutboundJob, Recording, RoutingDecision
from integrations.providers.rostelecom.call_info import CALL_INFO
from integrations.providers.rostelecom.wire import parse_party, parse_timestamp
from tests.rostelecom.conftest import API, FIXTURES, load, post, post_all, run_due

pytestmark = pytest.mark.django_db

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def complete_with(name: str) -> None:
    """Let the call_info job run against the PBX answering with the named fixture."""
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{API}/call_info", json=load(name))
        run_due()


# ---------------------------------------------------------------------------------------------------------
# Incoming
# ---------------------------------------------------------------------------------------------------------


def test_answered_incoming_call_is_complete_once_call_info_has_answered(client, pbx, extensions):
    post_all(client, pbx, load("incoming_answered.json"))

    call = Call.objects.get(provider_call_id="SDsnZugDFmTW7Sec")
    assert (call.direction, call.client_phone, call.external_phone) == ("in", "+79161234567", "+74992222222")
    assert call.client_phone_raw == "sip:79161234567@188.254.33.73"
    assert call.answered_extensions == ["101"]
    assert (call.first_answered_extension, call.last_answered_extension) == ("101", "101")
    # Wall time in Europe/Moscow (UTC+3), stored in UTC.
    assert call.started_at == at("2019-12-27 12:34:44.461")
    assert call.answered_at == at("2019-12-27 12:34:51.120")
    assert call.ended_at == at("2019-12-27 12:34:59.349")
    assert call.ended and call.result == "answered"
    assert not call.final_for_crm, "the outcome waits for call_info"
    job = OutboundJob.objects.get(kind=CALL_INFO)
    assert job.payload == {"session_id": "SDsnZugDFmTW7Sec"} and job.call == call

    complete_with("call_info_incoming_answered.json")

    call.refresh_from_db()
    assert call.final_for_crm and call.result == "answered"
    assert call.talk_seconds == 8  # 7:cc … 15:cd in the session log
    assert call.recording_expected is True
    assert call.recording.hints == {"session_id": "SDsnZugDFmTW7Sec"}
    assert call.completion_note == ""
    assert OutboundJob.objects.filter(kind="recording.fetch", call=call).exists()
    job.refresh_from_db()
    assert job.status == OutboundJob.SENT


def test_missed_incoming_call_in_national_and_bare_number_forms(client, pbx, extensions):
    post_all(client, pbx, load("incoming_missed.json"))
    complete_with("call_info_incoming_missed.json")

    call = Call.objects.get(provider_call_id="76981273981237")
    assert (call.client_phone, call.external_phone) == ("+74951234567", "+74992222222")
    assert call.rang_extensions == ["101"] and call.answered_extensions == []
    assert call.result == "missed" and call.final_for_crm
    assert call.talk_seconds == 0 and call.wait_seconds == 26
    assert call.recording_expected is False
    assert not Recording.objects.filter(call=call).exists()


def test_a_transfer_keeps_the_first_and_the_last_answering_pin(client, pbx, extensions):
    bodies = load("incoming_transfer.json")
    post_all(client, pbx, bodies)
    assert CallEvent.objects.count() == len(bodies), "the second connected is a new event"
    complete_with("call_info_incoming_transfer.json")

    call = Call.objects.get(provider_call_id="transfer-0001")
    assert call.answered_extensions == ["101", "102"]
    assert (call.first_answered_extension, call.last_answered_extension) == ("101", "102")
    assert call.responsible_extension == "102"
    assert call.talk_seconds == 77  # 5→40 with 101, 48→90 with 102
    assert call.final_for_crm and call.recording_expected


def test_unknown_states_are_stored_as_unknown_and_change_nothing(client, pbx, extensions):
    post_all(client, pbx, load("unknown_states.json"))
    call = Call.objects.get()
    assert list(call.events.values_list("kind", flat=True)) == ["unknown"] * 3
    assert (call.direction, call.ended, call.result) == ("", False, "")
    assert not OutboundJob.objects.exists()

    post_all(client, pbx, load("incoming_answered.json"))
    call.refresh_from_db()
    assert call.started_at == at("2019-12-27 12:34:44.461"), "`calling` does not start the call"
    assert call.direction == "in" and call.result == "answered"


# ---------------------------------------------------------------------------------------------------------
# Outbound and internal
# ---------------------------------------------------------------------------------------------------------


def test_outbound_answered_call_belongs_to_the_calling_pin(client, pbx, extensions):
    post_all(client, pbx, load("outbound_answered.json"))
    complete_with("call_info_outbound_answered.json")

    call = Call.objects.get(provider_call_id="1674-aFEQBQE")
    assert (call.direction, call.client_phone) == ("out", "+79161234567")
    assert call.client_phone_raw == "sip:+79161234567@188.254.33.73"
    assert call.initiating_extension == "101" and call.answered_extensions == ["101"]
    assert call.result == "answered" and call.talk_seconds == 20
    assert call.final_for_crm and call.recording_expected is True


def test_outbound_call_to_a_busy_number(client, pbx, extensions):
    post_all(client, pbx, load("outbound_busy.json"))
    complete_with("call_info_outbound_busy.json")

    call = Call.objects.get(provider_call_id="534dbe28-d3c2-4d6e-9d0b-5a5bd6a0f0a1")
    assert (call.direction, call.client_phone, call.initiating_extension) == ("out", "+79161234567", "102")
    assert call.result == "busy" and call.talk_seconds == 0 and call.final_for_crm
    assert call.recording_expected is False, "recording is on, but nobody talked"


def test_internal_call_is_final_at_end_without_asking_call_info(client, pbx, extensions):
    post_all(client, pbx, load("internal.json"))

    call = Call.objects.get(provider_call_id="internal-0001")
    assert call.direction == "internal" and call.client_phone == ""
    assert call.rang_extensions == ["102"] and call.answered_extensions == ["102"]
    assert call.result == "answered" and call.talk_seconds == 30
    assert call.final_for_crm
    assert not OutboundJob.objects.exists()


# ---------------------------------------------------------------------------------------------------------
# Duplicates and order
# ---------------------------------------------------------------------------------------------------------


def test_a_repeated_body_is_a_no_op(client, pbx, extensions):
    bodies = load("incoming_answered.json")
    post_all(client, pbx, bodies)
    post_all(client, pbx, bodies)
    assert CallEvent.objects.count() == 4
    assert OutboundJob.objects.filter(kind=CALL_INFO).count() == 1


def test_reordered_and_repeated_events_give_the_same_call_as_in_order(client, pbx, extensions):
    new, connected, disconnected, end = load("incoming_answered.json")
    post_all(client, pbx, [end, connected, end, disconnected, new, connected])

    call = Call.objects.get()
    assert CallEvent.objects.count() == 4
    assert list(call.events.values_list("kind", flat=True)) == [
        "ringing",
        "answered",
        "leg_ended",
        "completed",
    ]
    assert (call.direction, call.client_phone, call.external_phone) == ("in", "+79161234567", "+74992222222")
    assert call.answered_extensions == ["101"]
    assert call.started_at == at("2019-12-27 12:34:44.461")
    assert call.answered_at == at("2019-12-27 12:34:51.120")
    assert call.ended_at == at("2019-12-27 12:34:59.349")
    assert call.result == "answered"
    assert OutboundJob.objects.filter(kind=CALL_INFO).count() == 1


def test_states_of_the_same_millisecond_sort_new_connected_disconnected_end(client, pbx, extensions):
    stamp = "2019-12-27 15:34:44.461"
    bodies = [{**b, "timestamp": stamp} for b in load("incoming_answered.json")]
    post_all(client, pbx, list(reversed(bodies)))
    call = Call.objects.get()
    assert list(call.events.values_list("kind", flat=True)) == [
        "ringing",
        "answered",
        "leg_ended",
        "completed",
    ]


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------


def test_malformed_json_is_refused_with_400_and_stores_nothing(client, pbx):
    response = post(client, pbx, "call_events", (FIXTURES / "malformed.txt").read_bytes())
    assert response.status_code == 400
    assert response.json() == {"result": 1, "resultMessage": "Invalid JSON"}
    assert not (Call.objects.exists() or CallEvent.objects.exists() or OutboundJob.objects.exists())


@pytest.mark.parametrize(
    "body",
    [
        [{"session_id": "x", "state": "new"}],
        {"state": "new", "type": "incoming", "timestamp": "2019-12-27 15:34:44.461"},
        "just a string",
        {"session_id": "s" * 201, "state": "new", "type": "incoming"},
    ],
)
def test_json_that_is_not_an_event_is_refused_with_400(client, pbx, body):
    response = post(client, pbx, "call_events", json.dumps(body).encode())
    assert response.status_code == 400 and response.json()["result"] == 1
    assert not CallEvent.objects.exists()


def test_an_odd_accept_header_still_gets_the_json_answer(client, pbx):
    response = post(client, pbx, "call_events", load("incoming_answered.json")[0], HTTP_ACCEPT="text/html")
    assert response.status_code == 200 and response.json() == {"result": 0, "resultMessage": "ok"}


def test_timestamps_are_wall_time_in_the_connections_time_zone(client, pbx):
    pbx.settings = {**pbx.settings, "time_zone": "Asia/Yekaterinburg"}
    pbx.save()
    post_all(client, pbx, load("incoming_answered.json")[:1])
    assert Call.objects.get().started_at == at("2019-12-27 10:34:44.461")


def test_the_raw_payload_is_kept_with_the_event(client, pbx):
    body = load("incoming_answered.json")[0]
    post_all(client, pbx, [body])
    assert CallEvent.objects.get().raw == body
    assert not RoutingDecision.objects.exists()


# ---------------------------------------------------------------------------------------------------------
# Number forms and timestamps (pbx.md §1.6)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "phone", "extension", "login"),
    [
        ("sip:79771234567@example_domain.ru", "+79771234567", "", ""),
        ("sip:+74951234567@188.254.33.73", "+74951234567", "", ""),
        ("sip:username@188.254.33.73", "", "", "username"),
        ("user101@acme.rt.ru", "", "", "user101"),
        ("sip:101@acme.rt.ru", "", "101", ""),
        ("sip:111@test@domain.com", "", "111", ""),
        ("74959561111", "+74959561111", "", ""),
        ("84959561111", "+74959561111", "", ""),
        ("+74959561111", "+74959561111", "", ""),
        ("317", "", "317", ""),
        ("", "", "", ""),
        (None, "", "", ""),
    ],
)
def test_numbers_in_every_form_the_pbx_writes(raw, phone, extension, login):
    party = parse_party(raw, "RU")
    assert (party.phone, party.extension, party.login) == (phone, extension, login)


def test_timestamps_parse_with_and_without_milliseconds_and_as_unix_seconds():
    import zoneinfo

    moscow = zoneinfo.ZoneInfo("Europe/Moscow")
    assert parse_timestamp("2019-12-27 15:34:44.461", moscow) == at("2019-12-27 12:34:44.461")
    assert parse_timestamp("2019-12-27 15:34:44", moscow) == at("2019-12-27 12:34:44")
    assert parse_timestamp("1577450084", moscow) == at("2019-12-27 12:34:44")
    assert parse_timestamp("yesterday", moscow) is None
