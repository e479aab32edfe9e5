"""Mango webhooks: signatures, the call model per leg, summaries, recordings, results and odd paths."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from urllib.parse import urlencode

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from calls.models import Call, CallEvent, OriginateRequest, OutboundJob, Recording
from integrations.models import Extension, PbxConnection
from integrations.providers.base import get_provider
from tests.factories import ExtensionFactory, PbxConnectionFactory
from tests.mango.support import API_KEY, API_SALT, T0, compact, deliver, form, load, mango_sign, notices, post
from tests.webhook_security import WebhookSecurityContract

pytestmark = pytest.mark.django_db

UTC = dt.UTC


def at(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(T0 + seconds, tz=UTC)


def leg_event(entry="E-1", leg="L-1", seq=1, state="Appeared", location="abonent", ts=T0, **extra):
    payload = {
        "entry_id": entry,
        "call_id": leg,
        "timestamp": ts,
        "seq": seq,
        "call_state": state,
        "location": location,
        "from": {"number": "79161234567"},
        "to": {"extension": "101", "number": "sip:ivan@acme.mangosip.ru", "line_number": "74951234567"},
    }
    payload.update(extra)
    return payload


# ---------------------------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------------------------


class TestMangoWebhookSecurity(WebhookSecurityContract):
    failure_status = 403
    failure_body = {"result": 3102, "error": "Invalid signature"}
    credential_keys = ("api_key", "api_salt")

    def make_connection(self, tenant, suffix):
        return PbxConnectionFactory(
            tenant=tenant,
            provider="mango",
            settings={},
            secrets={
                "api_key": f"key{suffix}q4w8e1r5t3y6u0i2o4p8a1s3",
                "api_salt": f"salt{suffix}7f6g5h4j3k2l1z0x9c8",
            },
        )

    def signed_request(self, connection, secrets):
        text = compact(leg_event())
        body = form(text, secrets["api_key"], secrets["api_salt"]) if secrets else f"json={text}"
        return {
            "path": f"/hooks/mango/{connection.public_id}/events/call",
            "data": body,
            "content_type": "application/x-www-form-urlencoded",
        }


def _nothing_stored() -> bool:
    return not (CallEvent.objects.exists() or Call.objects.exists() or OutboundJob.objects.exists())


def test_a_bad_sign_is_refused_with_403_and_nothing_is_stored(client, pbx):
    response = post(client, pbx, "events/call", leg_event(), salt="not-the-salt")
    assert response.status_code == 403
    assert response.json() == {"result": 3102, "error": "Invalid signature"}
    assert _nothing_stored()


def test_a_key_that_is_not_this_connections_is_refused_even_when_signed_with_it(client, pbx):
    other_key = "z" * len(API_KEY)
    response = post(client, pbx, "events/call", leg_event(), key=other_key, salt=API_SALT)
    assert response.status_code == 403
    assert _nothing_stored()


def test_the_sign_is_checked_over_the_json_exactly_as_received(client, pbx):
    # Spaces, key order and a non-ASCII name as Mango may send them: re-serialising would change the bytes.
    text = (
        '{ "entry_id": "E-raw", "call_id": "L-raw", "seq": "1", "timestamp": "T0",\n "call_state": "Appeared",'
        ' "location": "abonent", "from": {"number": "79161234567", "name": "Пётр"}, "to": {"extension": 101}}'
    ).replace("T0", str(T0))
    assert post(client, pbx, "events/call", text).status_code == 200
    assert CallEvent.objects.get().raw["from"]["name"] == "Пётр"


def test_a_signature_of_the_reserialised_json_does_not_pass(client, pbx):
    text = '{"entry_id": "E-raw", "call_id": "L-raw", "seq": 1, "call_state": "Appeared", "location": "ivr"}'
    reserialised = compact(json.loads(text))
    # Signed over a re-serialisation, sent as written: what a verifier that re-dumps the JSON would accept.
    body = urlencode(
        [("vpbx_api_key", API_KEY), ("sign", mango_sign(API_KEY, reserialised, API_SALT)), ("json", text)]
    )
    response = client.post(
        f"/hooks/mango/{pbx.public_id}/events/call",
        data=body,
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 403
    assert _nothing_stored()


def test_ping_is_answered_200_unsigned_and_stores_nothing(client, pbx):
    assert client.post(f"/hooks/mango/{pbx.public_id}/ping").status_code == 200
    assert client.get(f"/hooks/mango/{pbx.public_id}/ping").status_code == 200
    assert post(client, pbx, "ping", {}).json() == {"result": 1000}
    assert client.post(f"/hooks/mango/{pbx.public_id}/").status_code == 200  # the bare base URL, too
    assert _nothing_stored()


def test_a_base_url_pasted_with_a_trailing_slash_still_reaches_the_handlers(client, pbx):
    body = form(compact(leg_event()))
    response = client.post(
        f"/hooks/mango/{pbx.public_id}//events/call",
        data=body,
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert CallEvent.objects.count() == 1


def test_malformed_json_is_a_400_and_stores_nothing(client, pbx):
    response = post(client, pbx, "events/call", "{not json")
    assert response.status_code == 400
    assert response.json()["result"] == 3104
    assert _nothing_stored()


# ---------------------------------------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------------------------------------


def test_an_incoming_call_through_the_ivr_is_answered_by_the_employee(client, pbx, crm, extensions):
    scenario = load("incoming_ivr_to_employee.json")
    deliver(client, pbx, scenario["webhooks"])

    call = Call.objects.get()
    assert (call.direction, call.result) == ("in", "answered")
    assert (call.client_phone, call.external_phone) == ("+79161234567", "+74951234567")
    assert call.rang_extensions == ["101"] and call.answered_extensions == ["101"]
    assert call.first_answered_extension == call.last_answered_extension == "101"
    assert (call.started_at, call.answered_at, call.ended_at) == (at(0), at(12), at(72))
    assert (call.talk_seconds, call.wait_seconds) == (60, 12)
    assert call.final_for_crm and call.recording_expected
    assert call.recording.hints == {"recording_id": "MToxMDA1NzU5MzpyZWM6MQ=="}
    # Every event is stored, and the summary adds its start and answer.
    assert CallEvent.objects.filter(call=call).count() == len(scenario["webhooks"]) + 2
    # The IVR leg opened no card; the employee's did, once.
    assert notices(crm) == {
        "ringing:101": "fake.popup",
        "answered:101": "fake.popup",
        "completed:101": "fake.final",
    }


def test_a_missed_call_rings_the_group_members_and_closes_their_cards(client, pbx, crm, extensions):
    deliver(client, pbx, load("missed_call.json")["webhooks"])

    call = Call.objects.get()
    assert call.result == "missed"
    assert call.rang_extensions == ["101", "102"] and call.answered_extensions == []
    # Nobody talked: no recording to wait for, final at once.
    assert call.final_for_crm and call.recording_expected is False
    assert not OutboundJob.objects.filter(kind="mango.recording_grace").exists()
    assert notices(crm) == {
        "ringing:101": "fake.popup",
        "ringing:102": "fake.popup",
        "leg_cancelled:101": "fake.final",
        "leg_cancelled:102": "fake.final",
        "completed:101": "fake.final",
    }


def test_in_a_ring_group_the_colleagues_who_did_not_answer_are_not_missed(client, pbx, crm, extensions):
    deliver(client, pbx, load("ring_group_one_answers.json")["webhooks"])

    call = Call.objects.get()
    assert call.result == "answered"
    assert call.rang_extensions == ["101", "102", "103"] and call.answered_extensions == ["102"]
    assert call.talk_seconds == 60
    # No recording event yet: the call waits for the grace period before CRMs hear it is complete.
    assert not call.final_for_crm
    grace = OutboundJob.objects.get(kind="mango.recording_grace")
    assert abs((grace.due_at - timezone.now()).total_seconds() - 60) < 5

    assert get_provider(pbx).perform(grace) == "no recording outcome within the grace period: final"
    call.refresh_from_db()
    assert call.final_for_crm and call.recording_expected is False
    assert not Recording.objects.exists()
    assert notices(crm) == {
        "ringing:101": "fake.popup",
        "ringing:102": "fake.popup",
        "ringing:103": "fake.popup",
        "answered:102": "fake.popup",
        "leg_cancelled:101": "fake.final",
        "leg_cancelled:103": "fake.final",
        "completed:102": "fake.final",
    }


def test_a_blind_transfer_keeps_the_call_whole(client, pbx, crm, extensions):
    deliver(client, pbx, load("blind_transfer.json")["webhooks"])

    call = Call.objects.get()
    assert call.result == "answered"
    assert call.rang_extensions == ["101", "102"] and call.answered_extensions == ["101", "102"]
    assert (call.first_answered_extension, call.last_answered_extension) == ("101", "102")
    assert call.responsible_extension == "102"
    assert call.talk_seconds == 91
    assert notices(crm)["completed:102"] == "fake.final"
    assert not any(key.startswith("leg_cancelled") for key in notices(crm))


def test_a_recording_too_short_to_keep_means_no_recording(client, pbx, crm, extensions):
    deliver(client, pbx, load("recording_too_short.json")["webhooks"])

    call = Call.objects.get()
    assert call.result == "answered" and call.final_for_crm
    assert call.recording_expected is False
    assert not Recording.objects.exists()


def test_a_recording_reported_after_the_grace_period_is_still_fetched(client, pbx, crm, extensions):
    deliver(client, pbx, load("ring_group_one_answers.json")["webhooks"])
    call = Call.objects.get()
    get_provider(pbx).perform(OutboundJob.objects.get(kind="mango.recording_grace"))

    late = {
        "recording_id": "UmVjLWxhdGU=",
        "recording_state": "Completed",
        "seq": 2,
        "entry_id": call.provider_call_id,
        "call_id": "MToxMDA1NzU5MzozNjM6MTAy",
        "extension": "102",
        "timestamp": T0 + 300,
        "completion_code": 1000,
        "recipient": "Cloud",
    }
    assert post(client, pbx, "events/recording", late).status_code == 200
    added = {
        "entry_id": call.provider_call_id,
        "product_id": 1,
        "user_id": 5502,
        "timestamp": T0 + 400,
        "recording_id": "UmVjLWxhdGU=",
    }
    assert post(client, pbx, "events/record/added", added).status_code == 200

    call.refresh_from_db()
    assert call.recording_expected
    assert call.recording.hints == {"recording_id": "UmVjLWxhdGU="}
    assert OutboundJob.objects.filter(kind="recording.fetch", call=call).count() == 1


def test_record_added_after_the_call_is_final_updates_the_fetching_hints(client, pbx, crm, extensions):
    webhooks = load("incoming_ivr_to_employee.json")["webhooks"]
    deliver(client, pbx, webhooks[:-1])
    recording = Recording.objects.get()
    assert recording.hints == {"recording_id": "MToxMDA1NzU5MzpyZWM6MQ=="}
    added = dict(webhooks[-1]["json"], recording_id="UmVjLW5ldw==")
    assert post(client, pbx, "events/record/added", added).status_code == 200
    recording.refresh_from_db()
    assert recording.hints == {"recording_id": "UmVjLW5ldw=="}


FINAL_FIELDS = (
    "direction",
    "result",
    "client_phone",
    "external_phone",
    "rang_extensions",
    "answered_extensions",
    "first_answered_extension",
    "last_answered_extension",
    "started_at",
    "answered_at",
    "ended_at",
    "talk_seconds",
    "wait_seconds",
    "final_for_crm",
    "recording_expected",
    "ended",
)


def _final_state(call: Call) -> dict:
    return {name: getattr(call, name) for name in FINAL_FIELDS}


@pytest.mark.parametrize("scenario", ["incoming_ivr_to_employee.json", "blind_transfer.json"])
def test_duplicate_and_shuffled_legs_give_the_same_call_even_with_the_summary_first(
    client, pbx, crm, extensions, scenario
):
    webhooks = load(scenario)["webhooks"]
    deliver(client, pbx, webhooks)
    expected = _final_state(Call.objects.get())
    events_per_call = CallEvent.objects.count()

    for seed in range(4):
        # Each copy gets its own ids (a new call, new legs, a new recording) by renaming the common prefix.
        copy = json.loads(json.dumps(webhooks).replace("MToxMDA1NzU5Mz", f"Shuffled{seed}x"))
        summary = [w for w in copy if w["path"] == "events/summary"]
        others = [w for w in copy if w["path"] != "events/summary"]
        random.Random(seed).shuffle(others)
        order = summary + others
        deliver(client, pbx, order + order[: len(order) // 2])  # summary first, then legs, then repeats
        call = Call.objects.get(provider_call_id__startswith=f"Shuffled{seed}x")
        assert _final_state(call) == expected, seed
        assert CallEvent.objects.filter(call=call).count() == events_per_call
    assert Call.objects.count() == 5


def test_the_summary_gives_direction_and_the_outcome_of_an_unanswered_outgoing_call(
    client, pbx, crm, extensions
):
    summary = {
        "entry_id": "E-busy",
        "call_direction": 2,
        "from": {"extension": "101", "number": "sip:ivan@acme.mangosip.ru"},
        "to": {"number": "79031234567"},
        "line_number": "74951234567",
        "create_time": T0,
        "forward_time": T0,
        "talk_time": 0,
        "end_time": T0 + 9,
        "entry_result": 0,
        "disconnect_reason": 1121,
    }
    assert post(client, pbx, "events/summary", summary).status_code == 200
    call = Call.objects.get()
    assert (call.direction, call.result, call.initiating_extension) == ("out", "busy", "101")
    assert call.client_phone == "+79031234567"
    assert call.final_for_crm


@pytest.mark.parametrize(("to_extension", "answered_by"), [("101", "101"), ("500", "")])
def test_a_summary_alone_names_who_answered_only_when_it_is_an_employee_not_a_group(
    client, pbx, crm, extensions, to_extension, answered_by
):
    ExtensionFactory(tenant=pbx.tenant, number="500", name="Sales", kind=Extension.GROUP)
    summary = {
        "entry_id": f"E-answered-{to_extension}",
        "call_direction": 1,
        "from": {"number": "79161234567"},
        "to": {"extension": to_extension, "number": "74951234567"},
        "line_number": "74951234567",
        "create_time": T0,
        "forward_time": T0 + 2,
        "talk_time": T0 + 5,
        "end_time": T0 + 65,
        "entry_result": 1,
        "disconnect_reason": 1110,
    }
    assert post(client, pbx, "events/summary", summary).status_code == 200
    call = Call.objects.get()
    assert call.result == "answered"
    assert call.last_answered_extension == answered_by


def test_an_ivr_only_call_is_not_answered_although_mango_says_entry_result_1(client, pbx, crm, extensions):
    # A documented quirk: an IVR-only call may come with entry_result 1 and talk_time 0.
    summary = {
        "entry_id": "E-ivr",
        "call_direction": 1,
        "from": {"number": "79161234567"},
        "line_number": "74951234567",
        "create_time": T0,
        "forward_time": 0,
        "talk_time": 0,
        "end_time": T0 + 20,
        "entry_result": 1,
        "disconnect_reason": 1110,
    }
    post(
        client,
        pbx,
        "events/call",
        leg_event(entry="E-ivr", leg="L-ivr", location="ivr", to={"number": "74951234567"}),
    )
    post(
        client,
        pbx,
        "events/call",
        leg_event(
            entry="E-ivr", leg="L-ivr", seq=2, state="Connected", location="ivr", to={"number": "74951234567"}
        ),
    )
    post(client, pbx, "events/summary", summary)
    call = Call.objects.get()
    assert call.result == "missed" and call.answered_at is None


# ---------------------------------------------------------------------------------------------------------
# Results of our commands, DTMF, unknown paths
# ---------------------------------------------------------------------------------------------------------


def test_a_refused_click_to_call_result_marks_the_request_failed(client, pbx, tenant, extensions):
    request = OriginateRequest.objects.create(
        tenant=tenant,
        pbx_connection=pbx,
        extension="101",
        phone="+79161234567",
        correlation_id="cb-0f3a",
        status=OriginateRequest.OK,
    )
    response = post(client, pbx, "result/callback", {"command_id": "cb-0f3a", "result": 2240})
    assert response.status_code == 200
    request.refresh_from_db()
    assert request.status == OriginateRequest.FAILED
    assert request.error == "Mango result 2240: no funds"
    assert not CallEvent.objects.exists()  # no call yet to store it with


def test_a_result_for_a_command_we_do_not_know_is_answered_and_only_logged(client, pbx):
    assert post(client, pbx, "result/transfer", {"command_id": "nobody", "result": 1000}).status_code == 200
    assert post(client, pbx, "result/stats", {"key": "k"}).status_code == 200
    assert _nothing_stored()


def test_dtmf_is_stored_with_its_call_as_an_unknown_event(client, pbx):
    dtmf = load("dtmf.json")
    assert post(client, pbx, "events/dtmf", dtmf).status_code == 200
    event = CallEvent.objects.get()
    assert (event.kind, event.leg_id, event.raw["dtmf"]) == ("unknown", dtmf["call_id"], "2")
    assert event.normalised["location"] == "ivr"


def test_other_events_and_results_are_answered_200_and_kept_when_they_name_a_call(client, pbx):
    sms = load("sms_result.json")
    assert post(client, pbx, "events/sms", sms).status_code == 200
    assert post(client, pbx, "events/sms", sms).status_code == 200  # the same notification twice
    event = CallEvent.objects.get()
    assert (event.kind, event.raw["action"]) == ("unknown", "events/sms")
    assert post(client, pbx, "events/record/tagged", {"recording_id": "x"}).status_code == 200
    assert CallEvent.objects.count() == 1


def test_a_path_outside_events_and_results_is_a_400(client, pbx):
    response = post(client, pbx, "commands/callback", {"entry_id": "E"})
    assert response.status_code == 400
    assert _nothing_stored()


def test_stored_raw_payloads_carry_no_credentials(client, pbx):
    post(client, pbx, "events/call", leg_event())
    raw = json.dumps(CallEvent.objects.get().raw)
    assert API_KEY not in raw and API_SALT not in raw


# ---------------------------------------------------------------------------------------------------------
# Time stamps (open question 13)
# ---------------------------------------------------------------------------------------------------------


def test_auto_offset_detects_time_stamps_three_hours_ahead_of_receipt(client, pbx):
    now = int(time.time())
    post(client, pbx, "events/call", leg_event(ts=now + 3 * 3600))
    occurred = CallEvent.objects.get().occurred_at
    assert abs((occurred - timezone.now()).total_seconds()) < 60
    # Remembered: a late event that cannot tell (a record/added hours later) gets the same shift.
    post(
        client,
        pbx,
        "events/record/added",
        {"entry_id": "E-1", "recording_id": "R", "timestamp": now + 9 * 3600},
    )
    late = CallEvent.objects.get(kind="recording_ready").occurred_at
    assert abs((late - timezone.now()).total_seconds() - 6 * 3600) < 60


def test_auto_offset_keeps_utc_time_stamps_as_they_are(client, pbx):
    now = int(time.time())
    post(client, pbx, "events/call", leg_event(ts=now - 2))
    assert CallEvent.objects.get().occurred_at == dt.datetime.fromtimestamp(now - 2, tz=UTC)


def test_a_fixed_offset_setting_is_applied_to_every_time_stamp(client, tenant):
    pbx = PbxConnectionFactory(
        tenant=tenant,
        provider="mango",
        settings={"timestamp_offset": "-10800"},
        secrets={"api_key": API_KEY, "api_salt": API_SALT},
    )
    post(client, pbx, "events/call", leg_event(ts=T0))
    assert CallEvent.objects.get().occurred_at == at(-10800)


def test_the_timestamp_offset_setting_is_auto_or_whole_seconds(tenant):
    connection = PbxConnection(
        tenant=tenant, key="m", provider="mango", settings={"timestamp_offset": 0}, secrets={}
    )
    connection.clean()
    assert connection.settings["timestamp_offset"] == "0"
    connection.settings = {"timestamp_offset": "three hours"}
    with pytest.raises(ValidationError, match="timestamp_offset"):
        connection.clean()


def test_the_webhook_stores_mangos_time_stamps_unshifted_and_the_processor_shifts_them(pbx, settings):
    """Offset detection reads and writes the cache: it belongs to the inbox processor, not to the request. With
    the cache pointed at a socket that never answers, the webhook is still answered at once and stores the
    event with the PBX's own epoch; applying it shifts it by the detected offset."""
    from django.core.cache import caches
    from django.test import Client

    from calls import processor
    from tests.listener import Listener

    listener = Listener()
    real_caches = settings.CACHES
    try:
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": f"redis://127.0.0.1:{listener.port}/1",
                "OPTIONS": {"socket_connect_timeout": 3, "socket_timeout": 3},
            }
        }
        now = int(time.time())
        started = time.monotonic()
        assert post(Client(), pbx, "events/call", leg_event(ts=now + 3 * 3600)).status_code == 200
        assert time.monotonic() - started < 1.0
        assert listener.connections() == 0, "the webhook touched the cache"
    finally:
        settings.CACHES = real_caches
        caches["default"].close()
        listener.close()
    stored = CallEvent.objects.get()
    assert stored.status == CallEvent.PENDING and stored.occurred_at == dt.datetime.fromtimestamp(
        now + 3 * 3600, tz=UTC
    )
    processor.drain()
    stored.refresh_from_db()
    assert stored.status == CallEvent.DONE
    assert abs((stored.occurred_at - timezone.now()).total_seconds()) < 60
