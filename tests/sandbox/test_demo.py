"""The demo flow a newcomer follows, end to end: `seed_demo`, then `simulate_call demo --scenario answered`
(paced like a real call) against a live portal with a real worker; the sandbox CRM's inbox shows the pop-up, the
completion and the recording link, and the link serves the audio with Range."""

from __future__ import annotations

import io

import pytest
import requests
from django.contrib.auth import get_user_model
from django.core.management import call_command

from calls.models import Call, Recording, RoutingDecision
from integrations.models import CrmConnection
from integrations.providers.sandbox.models import SandboxMessage
from tests.sandbox.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_seed_demo_then_one_simulated_call_reaches_the_sandbox_inbox_with_a_playable_recording(
    portal, beat, client, monkeypatch
):
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "demo-Password-42")
    call_command("seed_demo", stdout=io.StringIO())
    out = io.StringIO()
    call_command("simulate_call", "demo", scenario="answered", url=portal, stdout=out)
    printed = out.getvalue()
    assert "route: whose caller is this?: HTTP 200" in printed and '"extension":"101"' in printed
    assert "Sandbox inbox of demo/sandbox" in printed

    crm = CrmConnection.objects.get(tenant__slug="demo", provider="sandbox_crm")

    def inbox_complete() -> bool:
        kinds = set(SandboxMessage.objects.filter(crm_connection=crm).values_list("kind", flat=True))
        return {"routing", "popup", "completed", "history", "recording"} <= kinds

    assert wait_for(inbox_complete, timeout=90), printed
    call = Call.objects.get(tenant__slug="demo")
    assert (call.result, call.last_answered_extension, call.talk_seconds) == ("answered", "101", 8)
    assert RoutingDecision.objects.get(call=call).display_name == "Ivan Petrov (demo client)"
    popups = SandboxMessage.objects.filter(crm_connection=crm, kind="popup").order_by("id")
    assert popups[0].text.startswith("Incoming call from +79161110022 (Ivan Petrov (demo client))")
    assert popups[0].extension == "101"

    recording = Recording.objects.get(call=call)
    link = SandboxMessage.objects.get(crm_connection=crm, kind="recording").data["link"]
    assert link == recording.public_url and link.startswith(portal)
    whole = requests.get(link, timeout=10)
    assert whole.status_code == 200 and whole.headers["Content-Type"] == "audio/wav"
    assert whole.content[:4] == b"RIFF" and whole.content[8:12] == b"WAVE"
    part = requests.get(link, headers={"Range": "bytes=0-99"}, timeout=10)
    assert part.status_code == 206 and part.content == whole.content[:100]
    assert part.headers["Content-Range"] == f"bytes 0-99/{len(whole.content)}"

    # The inbox page shows them as the CRM would.
    client.force_login(get_user_model().objects.get(username="admin"))
    page = client.get(f"/admin/integrations/crmconnection/{crm.pk}/provider-page/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Call completed" in html and link in html and "Ivan Petrov" in html
