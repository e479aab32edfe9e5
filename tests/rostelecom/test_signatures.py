"""Signatures, both directions: the guide's worked example, raw bytes, and refusals that store nothing."""

from __future__ import annotations

import json

import pytest

from calls.models import Call, CallEvent, OutboundJob, RoutingDecision
from integrations.providers.rostelecom import RostelecomProvider
from integrations.providers.rostelecom.wire import dump_json, signature
from tests.factories import PbxConnectionFactory
from tests.rostelecom.conftest import CLIENT_ID, FIXTURES, SIGN_KEY, load, post, sign
from tests.webhook_security import WebhookSecurityContract

REFUSED = {"result": 1, "resultMessage": "Invalid signature"}


def nothing_stored() -> bool:
    return not (
        Call.objects.exists()
        or CallEvent.objects.exists()
        or OutboundJob.objects.exists()
        or RoutingDecision.objects.exists()
    )


def test_the_guides_worked_example_gives_the_published_signature():
    vector = load("signature_vector.json")
    body = vector["body"].encode("utf-8")
    assert signature(vector["client_id"], body, vector["sign_key"]) == vector["expected"]


def test_the_signature_covers_the_exact_bytes_so_reserialising_changes_it():
    vector = load("signature_vector.json")
    reserialised = json.dumps(json.loads(vector["body"])).encode()
    assert signature(vector["client_id"], reserialised, vector["sign_key"]) != vector["expected"]


def test_what_we_send_is_ascii_only_json():
    body = dump_json({"displayName": "Иванов Иван"})
    assert (
        body == b'{"displayName":"\\u0418\\u0432\\u0430\\u043d\\u043e\\u0432 \\u0418\\u0432\\u0430\\u043d"}'
    )
    assert body.isascii()


class TestRostelecomCallEventsWebhookSecurity(WebhookSecurityContract):
    failure_status = 403
    failure_body = REFUSED

    def make_connection(self, tenant, suffix):
        return PbxConnectionFactory(
            tenant=tenant,
            provider="rostelecom",
            settings={"domain": "acme.rt.ru"},
            secrets={
                "client_id": f"CLIENT{suffix.upper()}0123456789ABCDEF",
                "sign_key": f"key-{suffix}-0123456789",
            },
        )

    def signed_request(self, connection, secrets):
        body = (FIXTURES / "incoming_answered.json").read_text(encoding="utf-8")
        raw = json.dumps(json.loads(body)[0], ensure_ascii=False).encode("utf-8")
        headers = {}
        if secrets:
            headers = {
                "X-Client-ID": secrets["client_id"],
                "X-Client-Sign": sign(raw, secrets["client_id"], secrets["sign_key"]),
            }
        return {
            "path": f"/hooks/rostelecom/{connection.public_id}/call_events",
            "data": raw,
            "content_type": "application/json",
            "headers": headers,
        }


class TestRostelecomGetNumberInfoWebhookSecurity(TestRostelecomCallEventsWebhookSecurity):
    def signed_request(self, connection, secrets):
        request = super().signed_request(connection, secrets)
        raw = json.dumps(load("get_number_info_guide.json")).encode()
        request["path"] = request["path"].replace("call_events", "get_number_info")
        request["data"] = raw
        if secrets:
            request["headers"]["X-Client-Sign"] = sign(raw, secrets["client_id"], secrets["sign_key"])
        return request


@pytest.mark.django_db
def test_a_valid_signature_over_utf8_bytes_with_spaces_is_accepted(client, pbx):
    # Not re-serialised: the body keeps the PBX's spacing and its UTF-8 Cyrillic.
    raw = (
        '{"session_id": "s-utf8", "timestamp": "2019-12-27 15:34:59.100", "type": "incoming", '
        '"state": "disconnected", "from_number": "79161234567", "request_pin": "101", '
        '"disconnect_reason": "Отбой вызывающего абонента"}'
    ).encode()
    response = post(client, pbx, "call_events", raw)
    assert response.status_code == 200
    assert CallEvent.objects.get().normalised["disconnect_reason"] == "Отбой вызывающего абонента"


@pytest.mark.django_db
def test_the_signature_is_compared_case_insensitively(client, pbx):
    raw = json.dumps(load("incoming_answered.json")[0]).encode()
    response = post(client, pbx, "call_events", raw, signature=sign(raw).upper())
    assert response.status_code == 200


@pytest.mark.django_db
def test_a_bad_signature_is_refused_with_403_and_stores_nothing(client, pbx, caplog):
    raw = json.dumps(load("incoming_answered.json")[0]).encode()
    response = post(client, pbx, "call_events", raw, signature=sign(raw + b" "))
    assert response.status_code == 403
    assert response.json() == REFUSED
    assert nothing_stored()
    assert "X-Client-Sign missing or wrong" in caplog.text
    assert SIGN_KEY not in caplog.text and CLIENT_ID not in caplog.text


@pytest.mark.django_db
def test_a_missing_signature_is_refused(client, pbx):
    raw = json.dumps(load("incoming_answered.json")[0]).encode()
    response = client.post(
        f"/hooks/rostelecom/{pbx.public_id}/call_events",
        data=raw,
        content_type="application/json",
        HTTP_X_CLIENT_ID=CLIENT_ID,
    )
    assert response.status_code == 403 and response.json() == REFUSED
    assert nothing_stored()


@pytest.mark.django_db
def test_a_wrong_client_id_is_refused_even_when_the_signature_matches_it(client, pbx, caplog):
    raw = json.dumps(load("incoming_answered.json")[0]).encode()
    response = post(client, pbx, "call_events", raw, client_id="000003C405E6525C64C184258C44EC98")
    assert response.status_code == 403 and response.json() == REFUSED
    assert nothing_stored()
    assert "X-Client-ID missing or not this connection's" in caplog.text


@pytest.mark.django_db
def test_a_connection_without_credentials_refuses_everything(client, tenant):
    pbx = PbxConnectionFactory(tenant=tenant, provider="rostelecom", secrets={})
    raw = json.dumps(load("incoming_answered.json")[0]).encode()
    response = post(client, pbx, "call_events", raw, signature=sign(raw, CLIENT_ID, ""))
    assert response.status_code == 403
    assert nothing_stored()


@pytest.mark.django_db
def test_our_answers_are_signed_over_the_bytes_we_send(client, pbx):
    raw = json.dumps(load("incoming_answered.json")[0]).encode()
    response = post(client, pbx, "call_events", raw)
    assert response.content == b'{"result":0,"resultMessage":"ok"}'
    assert response["X-Client-ID"] == CLIENT_ID
    assert response["X-Client-Sign"] == sign(response.content)


def test_settings_refuse_an_unknown_time_zone_and_a_record_ip_that_is_not_an_address():
    from integrations.providers.base import SchemaError

    with pytest.raises(SchemaError, match="time_zone"):
        RostelecomProvider.clean_settings({"time_zone": "Mars/Olympus"})
    with pytest.raises(SchemaError, match="record_ip"):
        RostelecomProvider.clean_settings({"record_ip": "office"})
    cleaned = RostelecomProvider.clean_settings(
        {"record_ip": "188.254.33.84", "time_zone": "Asia/Yekaterinburg"}
    )
    assert cleaned["record_ip"] == "188.254.33.84" and cleaned["routing_budget_ms"] == 800
