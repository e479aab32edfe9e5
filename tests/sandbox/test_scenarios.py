"""The contract test of every PBX adapter: each scenario of `simulate_call`, played by the PBX provider's own
`simulate()` over HTTP against a live server, processed by a real Celery worker, must produce the call it
describes (direction, result, extensions, talk time, recording) and the sandbox CRM's messages.

Only the third parties' HTTP is faked (`responses`, with the live server passed through): Rostelecom's call_info
and get_record, Mango's commands/route and queries/recording/post, and the recording downloads. The sandbox PBX
needs nothing faked: its far end is in the portal.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qs

import pytest
import responses
from django.core.management import call_command

from calls.models import Call, OutboundJob, Recording
from integrations.providers.sandbox.models import SandboxMessage
from tests.factories import PbxConnectionFactory
from tests.mango.support import API_KEY, API_SALT, API_URL
from tests.rostelecom.conftest import API as RT_API
from tests.rostelecom.conftest import CLIENT_ID, SIGN_KEY
from tests.sandbox.conftest import MP3, RECORDS, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class Expected:
    direction: str
    result: str
    answered: tuple[str, ...]
    talk: int
    recorded: bool
    rang: tuple[str, ...] = ()


# What each scenario must produce, whatever the PBX (integrations/simulation.py: talk time 8 s).
EXPECTED = {
    "answered": Expected("in", "answered", ("101",), 8, True, ("101",)),
    "missed": Expected("in", "missed", (), 0, False, ("101",)),
    "busy": Expected("out", "busy", (), 0, False),
    "transfer": Expected("in", "answered", ("101", "102"), 15, True, ("101", "102")),
    "ring-group": Expected("in", "answered", ("102",), 8, True, ("101", "102", "103")),
    "click-to-call": Expected("out", "answered", ("101",), 8, True),
    "recording": Expected("in", "answered", ("101",), 8, True, ("101",)),
}
PROVIDERS = ("sandbox_pbx", "rostelecom", "mango")


def rostelecom_api(mock: responses.RequestsMock, expected: Expected) -> None:
    """call_info answers what the PBX would know of the scenario's call; get_record gives a download link."""

    def call_info(request):
        session_id = json.loads(request.body)["session_id"]
        answered = bool(expected.answered)
        info = {
            "direction": 1 if expected.direction == "in" else 2,
            "state": 1 if answered else 2,
            "answering_pin": expected.answered[-1] if answered and expected.direction == "in" else "",
            "duration": expected.talk + 4,
            "is_record": expected.recorded,
            "status_code": "486" if expected.result == "busy" else "",
            "session_id": session_id,
        }
        return 200, {}, json.dumps({"result": 0, "resultMessage": "", "info": info})

    def get_record(request):
        session_id = json.loads(request.body)["session_id"]
        return 200, {}, json.dumps({"result": "0", "url": f"{RECORDS}/{session_id}.mp3"})

    mock.add_callback(responses.POST, f"{RT_API}/call_info", callback=call_info)
    mock.add_callback(responses.POST, f"{RT_API}/get_record", callback=get_record)


def mango_api(mock: responses.RequestsMock) -> None:
    def recording_post(request):
        payload = json.loads(parse_qs(request.body)["json"][0])
        return 302, {"Location": f"{RECORDS}/{payload['recording_id']}.mp3"}, ""

    mock.add(responses.POST, f"{API_URL}/commands/route", json={"result": 1000})
    mock.add_callback(responses.POST, f"{API_URL}/queries/recording/post", callback=recording_post)


PBX_SETTINGS = {
    "sandbox_pbx": ({}, {"signing_key": "contract-signing-key-0123456789"}),
    "rostelecom": ({"domain": "acme.rt.ru"}, {"client_id": CLIENT_ID, "sign_key": SIGN_KEY}),
    "mango": ({}, {"api_key": API_KEY, "api_salt": API_SALT}),
}


@pytest.mark.parametrize("scenario", list(EXPECTED))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_scenario_produces_its_call(provider, scenario, portal, tenant, sandbox_crm, worker):
    expected = EXPECTED[scenario]
    settings_, secrets = PBX_SETTINGS[provider]
    pbx = PbxConnectionFactory(tenant=tenant, provider=provider, settings=settings_, secrets=secrets)
    # Extensions that rang but did not take the call: their cards close when the call is final.
    cards_to_close = sorted(set(expected.rang) - set(expected.answered))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(portal)
        mock.add(responses.GET, re.compile(rf"{re.escape(RECORDS)}/.+"), body=MP3, content_type="audio/mpeg")
        if provider == "rostelecom":
            rostelecom_api(mock, expected)
        elif provider == "mango":
            mango_api(mock)

        out = io.StringIO()
        call_command(
            "simulate_call", tenant.slug, scenario=scenario, fast=True, url=portal, yes=True, stdout=out
        )
        assert "HTTP 200" in out.getvalue()

        def done() -> bool:
            call = Call.objects.filter(pbx_connection=pbx).first()
            if call is None or not call.final_for_crm:
                return False
            if expected.recorded and not Recording.objects.filter(call=call, state=Recording.STORED).exists():
                return False
            kinds = set(
                SandboxMessage.objects.filter(pbx_call_id=call.provider_call_id).values_list(
                    "kind", flat=True
                )
            )
            closed = SandboxMessage.objects.filter(
                pbx_call_id=call.provider_call_id, data__notice="leg_cancelled"
            )
            # A job is marked sent just after its message is delivered: wait for both.
            open_jobs = OutboundJob.objects.filter(status=OutboundJob.PENDING).exclude(
                kind="mango.recording_grace"
            )
            return (
                {"completed", "history"} <= kinds
                and ("recording" in kinds) == expected.recorded
                and closed.count() == len(cards_to_close)
                and not open_jobs.exists()
            )

        assert wait_for(done, timeout=90), out.getvalue()

    call = Call.objects.get(pbx_connection=pbx)
    assert call.direction == expected.direction
    assert call.result == expected.result
    assert tuple(call.answered_extensions) == expected.answered
    assert call.talk_seconds == expected.talk
    assert bool(call.recording_expected) == expected.recorded
    if expected.rang:  # a group rings its members at once: no order among them
        assert sorted(call.rang_extensions) == sorted(expected.rang)
    if expected.direction == "out":
        assert call.initiating_extension == "101"
    assert call.client_phone == "+79161110022"
    closed = SandboxMessage.objects.filter(pbx_call_id=call.provider_call_id, data__notice="leg_cancelled")
    assert sorted(closed.values_list("extension", flat=True)) == cards_to_close
    completed = SandboxMessage.objects.get(kind="completed", pbx_call_id=call.provider_call_id)
    assert completed.data["result"] == expected.result and completed.data["talk_seconds"] == expected.talk
    if expected.recorded:
        recording = Recording.objects.get(call=call)
        link = SandboxMessage.objects.get(kind="recording", pbx_call_id=call.provider_call_id).data["link"]
        assert link == recording.public_url
    assert not OutboundJob.objects.filter(status__in=[OutboundJob.DEAD, OutboundJob.FAILED]).exists()
