"""Playback audit (issue 15 item 13): PlaybackLog shows on the call's admin page and as its own read-only
list, scoped like the calls."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from calls.models import Call, PlaybackLog, Recording
from tests.admin_world import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def played(world):
    def make(pbx, call_id: str, address: str) -> PlaybackLog:
        call = Call.objects.create(
            tenant=pbx.tenant, pbx_connection=pbx, provider_call_id=call_id, started_at=timezone.now()
        )
        recording = Recording.objects.create(call=call, state=Recording.STORED)
        return PlaybackLog.objects.create(
            recording=recording, address=address, user_agent="Mozilla/5.0 (CRM player)", status=206
        )

    return make(world.pbx_a, "call-a", "203.0.113.7"), make(world.pbx_b, "call-b", "198.51.100.9")


def test_the_call_page_shows_who_played_its_recording(world, played):
    mine, _theirs = played
    page = client_for(world.support_a).get(reverse("admin:calls_call_change", args=[mine.recording.call_id]))

    assert page.status_code == 200
    assert "203.0.113.7" in page.content.decode() and "CRM player" in page.content.decode()


def test_the_playback_list_is_read_only_and_scoped(world, played):
    mine, theirs = played
    client = client_for(world.admin_a)

    listing = client.get(reverse("admin:calls_playbacklog_changelist"))
    own = client.get(reverse("admin:calls_playbacklog_change", args=[mine.pk]))
    foreign = client.get(reverse("admin:calls_playbacklog_change", args=[theirs.pk]))

    assert listing.status_code == 200
    assert "203.0.113.7" in listing.content.decode() and "198.51.100.9" not in listing.content.decode()
    assert own.status_code == 200 and "Save" not in own.content.decode()
    assert foreign.status_code == 404
    assert client.get(reverse("admin:calls_playbacklog_add")).status_code == 403
    assert (
        client.post(reverse("admin:calls_playbacklog_delete", args=[mine.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert PlaybackLog.objects.count() == 2


def test_the_link_from_the_call_page_lists_that_calls_playbacks(world, played):
    _mine, _theirs = played
    client = client_for(world.support_a)

    listing = client.get(reverse("admin:calls_playbacklog_changelist") + "?q=call-a")

    assert listing.status_code == 200 and "203.0.113.7" in listing.content.decode()
