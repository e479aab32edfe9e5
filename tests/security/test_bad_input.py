"""Bad input that used to crash with a 500 on one database or both: NUL characters (PostgreSQL refuses them in
text and jsonb), deeply nested JSON (RecursionError) and a Range header with thousands of digits. Each is a
clear 4xx in the provider's own format, stores nothing, and valid input still goes through."""

from __future__ import annotations

import json

import pytest

from calls.models import Call, CallEvent
from integrations.inbound_guard import MAX_NESTING, body_problem, nesting_depth
from tests.factories import ExtensionFactory, PbxConnectionFactory, TenantFactory
from tests.mango import support as mango
from tests.rostelecom import conftest as rt

pytestmark = pytest.mark.django_db

DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture
def rostelecom_pbx():
    return PbxConnectionFactory(
        tenant=TenantFactory(slug="rt"),
        provider="rostelecom",
        settings={"domain": "acme.rt.ru"},
        secrets={"client_id": rt.CLIENT_ID, "sign_key": rt.SIGN_KEY},
    )


@pytest.fixture
def mango_pbx():
    return PbxConnectionFactory(
        tenant=TenantFactory(slug="mg"),
        provider="mango",
        settings={},
        secrets={"api_key": mango.API_KEY, "api_salt": mango.API_SALT},
    )


def _rt_event(**overrides: str) -> str:
    body = {
        "session_id": "SDn5kB0nBm6",
        "timestamp": "2024-11-24 12:00:00",
        "type": "incoming",
        "state": "new",
        "from_number": "+79161234567",
        "request_number": "+74951234567",
    }
    body.update(overrides)
    return json.dumps(body)


@pytest.mark.parametrize(
    "raw",
    [
        _rt_event(from_number="+7916\x001234567"),  # json.dumps writes the \u0000 escape
        _rt_event().replace("SDn5kB0nBm6", "SDn5\x00kB0nBm6"),  # a raw NUL byte
        '{"session_id": ' + DEEP + "}",
    ],
    ids=["nul-escape", "nul-byte", "deep-nesting"],
)
def test_rostelecom_call_events_refuse_nul_and_deep_nesting_with_its_error_body(client, rostelecom_pbx, raw):
    response = rt.post(client, rostelecom_pbx, "call_events", raw.encode())

    assert response.status_code == 400, response.content
    assert response.json()["result"] == 1 and response.json()["resultMessage"]
    assert not CallEvent.objects.exists() and not Call.objects.exists()


def test_rostelecom_valid_event_still_goes_through(client, rostelecom_pbx):
    response = rt.post(client, rostelecom_pbx, "call_events", _rt_event().encode())

    assert response.status_code == 200
    assert CallEvent.objects.count() == 1


@pytest.mark.parametrize(
    "json_text",
    [
        '{"entry_id":"MTAx\\u0000","call_id":"x","timestamp":1732438800,"seq":1,"call_state":"Appeared",'
        '"location":"ivr","from":{"number":"79161234567"},"to":{"number":"74951234567"}}',
        '{"entry_id":' + DEEP + "}",
    ],
    ids=["nul-escape", "deep-nesting"],
)
def test_mango_events_refuse_nul_and_deep_nesting_with_its_error_body(client, mango_pbx, json_text):
    response = mango.post(client, mango_pbx, "events/call", json_text)

    assert response.status_code == 400, response.content
    assert response.json()["result"] == 3104
    assert not CallEvent.objects.exists()


def test_a_recursion_error_inside_a_parser_is_bad_input_not_a_500(client, rostelecom_pbx, monkeypatch):
    """The guard's limit can be passed by a parser of its own; the view still answers in the provider's
    format. Raised by the real json module: the limit is lowered, not the parser replaced."""
    monkeypatch.setattr("integrations.inbound_guard.MAX_NESTING", 10_000)

    response = rt.post(client, rostelecom_pbx, "call_events", ('{"a":' + DEEP + "}").encode())

    assert response.status_code == 400
    assert response.json()["result"] == 1


def test_nesting_depth_ignores_brackets_inside_strings():
    assert nesting_depth('{"a": "[[[[[[", "b": [1, {"c": "]]]"}]}') == 3
    assert nesting_depth(r'{"a": "\"[[[["}') == 1
    assert body_problem(("[" * (MAX_NESTING + 1)).encode(), "application/json")
    assert body_problem(b'{"a": "\\\\u0000"}', "application/json") is None  # an escaped backslash, not NUL


# --------------------------------------------------------------------------------------------- column lengths


def _mango_call(entry_id: str = "MToxMDE=", number: str = "79161234567") -> str:
    return json.dumps(
        {
            "entry_id": entry_id,
            "call_id": "MToxMDE6MQ==",
            "timestamp": mango.T0,
            "seq": 1,
            "call_state": "Appeared",
            "location": "ivr",
            "from": {"number": number},
            "to": {"number": "74951234567", "line_number": "74951234567"},
        }
    )


@pytest.mark.parametrize(
    "json_text",
    [_mango_call(entry_id="E" * 201), _mango_call(number="7" * 201)],
    ids=["entry_id", "caller-number"],
)
def test_mango_fields_longer_than_their_columns_are_a_400_in_mangos_format(client, mango_pbx, json_text):
    response = mango.post(client, mango_pbx, "events/call", json_text)

    assert response.status_code == 400, response.content
    assert response.json()["result"] == 3104 and "200 characters" in response.json()["error"]
    assert not Call.objects.exists() and not CallEvent.objects.exists()


def test_mango_fields_exactly_at_the_limit_are_stored(client, mango_pbx):
    response = mango.post(client, mango_pbx, "events/call", _mango_call(entry_id="E" * 200))

    assert response.status_code == 200
    assert Call.objects.get().provider_call_id == "E" * 200


def test_the_event_limits_match_the_columns():
    from calls.events import MAX_LENGTHS
    from calls.models import Call as CallModel
    from calls.models import CallEvent as EventModel

    columns = {
        "provider_call_id": CallModel._meta.get_field("provider_call_id").max_length,
        "leg_id": EventModel._meta.get_field("leg_id").max_length,
        "client_phone_raw": CallModel._meta.get_field("client_phone_raw").max_length,
        "order_key": EventModel._meta.get_field("order_key").max_length,
    }
    assert columns == MAX_LENGTHS


@pytest.fixture
def retailcrm():
    from tests.retailcrm.conftest import retailcrm_connection

    tenant = TenantFactory(slug="rc")
    PbxConnectionFactory(tenant=tenant, provider="rostelecom", settings={"domain": "rc.rt.ru"})
    ExtensionFactory(tenant=tenant, number="101")
    return retailcrm_connection(tenant)


@pytest.mark.parametrize("action", ["make-call", "user-status"])
def test_a_retailcrm_user_id_longer_than_100_characters_is_a_400_in_its_format(client, retailcrm, action):
    from calls.models import OriginateRequest
    from tests.retailcrm.conftest import CLIENT_ID

    params = {
        "clientId": CLIENT_ID,
        "userId": "9" * 101,
        "code": "101",
        "phone": "+79161234567",
        "status": "busy",
    }
    response = client.get(f"/hooks/retailcrm/{retailcrm.public_id}/{action}", params)

    assert response.status_code == 400, response.content
    assert response.json() == {"success": False, "error": "userId longer than 100 characters"}
    assert not OriginateRequest.objects.exists()
