"""Recording-link tokens (issue 15 item 12): derived by HMAC over the recording id and a version, never stored;
revoking bumps the version (the old link 404s) and re-sends the new link to CRMs whose protocol allows it."""

from __future__ import annotations

import pytest
from django.core import signing
from django.urls import reverse

from calls import services
from calls.models import Recording, legacy_token_hash
from tests.admin_world import client_for
from tests.factories import CrmConnectionFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def recording(stored_recording):
    return stored_recording()


def status(client, token: str) -> int:
    return client.get(f"/records/{token}").status_code


def test_the_token_is_not_stored_anywhere_in_the_row(recording):
    field_names = {f.name for f in Recording._meta.get_fields()}
    values = Recording.objects.filter(pk=recording.pk).values().get()

    assert "token" not in field_names
    assert recording.token not in {str(v) for v in values.values()}
    assert recording.token.split(":")[1] not in recording.file


def test_the_derived_link_serves_and_its_opaque_part_has_at_least_128_bits(client, recording):
    assert status(client, recording.token) == 200
    assert len(recording.token.split(":", 1)[1]) >= 22  # ≥ 128 bits of base64


def test_tampered_tokens_are_404(client, recording, stored_recording):
    other = stored_recording()
    token = recording.token
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    swapped = f"{other.pk}.1:{token.split(':', 1)[1]}"
    other_salt = signing.Signer(salt="something-else").sign(f"{recording.pk}.1")

    for bad in (flipped, token[:-5], swapped, other_salt, f"{recording.pk}.1", "x" * 5000):
        assert status(client, bad) == 404, bad


def test_revoking_bumps_the_version_and_the_old_link_stops_working(client, recording):
    old = recording.token

    services.revoke_recording_link(recording)
    recording.refresh_from_db()

    assert recording.link_version == 2
    assert status(client, old) == 404
    assert status(client, recording.token) == 200


def test_links_survive_a_secret_key_rotation_while_the_old_key_is_a_fallback(client, recording, settings):
    token = recording.token
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-secret-key-0123456789-0123456789-0123456789-abcdef"

    assert status(client, token) == 200
    settings.SECRET_KEY_FALLBACKS = []
    assert status(client, token) == 404


def test_links_issued_before_tokens_were_derived_still_work_until_revoked(client, recording):
    Recording.objects.filter(pk=recording.pk).update(
        legacy_token_hash=legacy_token_hash("old-random-token-xyz")
    )

    assert status(client, "old-random-token-xyz") == 200
    services.revoke_recording_link(recording)
    assert status(client, "old-random-token-xyz") == 404


def test_revoking_re_sends_the_link_where_the_crms_protocol_allows(tenant, recording):
    planfix = CrmConnectionFactory(
        tenant=tenant,
        provider="planfix",
        key="pf",
        settings={"api_url": "https://acme.planfix.ru/api"},
        secrets={"planfix_token": "p" * 32, "pbx_token": "t" * 32},
    )
    wire = CrmConnectionFactory(
        tenant=tenant,
        provider="wirecrm",
        key="wire",
        settings={},
        secrets={"webhook_url": "https://wirecrm.example.test/hook", "pbx_token": "t" * 32},
    )

    queued = services.revoke_recording_link(recording)
    again = services.revoke_recording_link(recording)

    assert queued == 2 and again == 2  # one per CRM each time: every new link goes out
    assert planfix.jobs.filter(kind="planfix.record", dedupe_key__endswith=":v2").exists()
    assert wire.jobs.filter(dedupe_key__endswith=":v3").exists()


def test_a_tenant_admin_revokes_from_the_call_list(settings, tenant, recording, client):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    admin = UserFactory(username="anna")
    MembershipFactory(tenant=tenant, user=admin, role="admin")
    old = recording.token

    response = client_for(admin).post(
        reverse("admin:calls_call_changelist"),
        {"action": "revoke_recording_link", "_selected_action": [recording.call_id]},
    )

    assert response.status_code == 302
    assert status(client, old) == 404
