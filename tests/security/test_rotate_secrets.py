"""rotate_secrets (issue 15 item 15): every connection's secrets re-encrypted with the first key of
FIELD_ENCRYPTION_KEYS, so the old key can be dropped."""

from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import CommandError, call_command
from django.db import connection

from integrations.models import CrmConnection, PbxConnection
from tests.factories import CrmConnectionFactory, PbxConnectionFactory, TenantFactory

pytestmark = pytest.mark.django_db

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def raw_tokens() -> list[str]:
    with connection.cursor() as cursor:
        tokens = []
        for model in (PbxConnection, CrmConnection):
            cursor.execute(f"SELECT secrets FROM {model._meta.db_table} ORDER BY id")
            tokens += [row[0] for row in cursor.fetchall()]
    return tokens


@pytest.fixture
def connections(settings):
    settings.FIELD_ENCRYPTION_KEYS = [OLD]
    tenant = TenantFactory(slug="acme")
    pbx = PbxConnectionFactory(
        tenant=tenant, provider="mango", secrets={"api_key": "k" * 32, "api_salt": "s" * 32}
    )
    crm = CrmConnectionFactory(
        tenant=tenant, provider="planfix", secrets={"planfix_token": "p" * 32, "pbx_token": "t" * 32}
    )
    return pbx, crm


def test_every_secret_is_re_encrypted_with_the_first_key(settings, connections):
    pbx, crm = connections
    settings.FIELD_ENCRYPTION_KEYS = [NEW, OLD]
    out = io.StringIO()

    call_command("rotate_secrets", stdout=out)

    for token in raw_tokens():
        Fernet(NEW.encode()).decrypt(token.encode())  # the new key alone reads every one
        with pytest.raises(InvalidToken):
            Fernet(OLD.encode()).decrypt(token.encode())
    settings.FIELD_ENCRYPTION_KEYS = [NEW]  # the old key is gone
    assert PbxConnection.objects.get(pk=pbx.pk).secrets == {"api_key": "k" * 32, "api_salt": "s" * 32}
    assert CrmConnection.objects.get(pk=crm.pk).secrets["pbx_token"] == "t" * 32
    assert "1 PBX connections re-encrypted" in out.getvalue()


def test_dry_run_writes_nothing(settings, connections):
    before = raw_tokens()
    settings.FIELD_ENCRYPTION_KEYS = [NEW, OLD]

    call_command("rotate_secrets", "--dry-run", stdout=io.StringIO())

    assert raw_tokens() == before


def test_a_secret_no_key_can_read_stops_the_rotation_and_changes_nothing(settings, connections):
    before = raw_tokens()
    settings.FIELD_ENCRYPTION_KEYS = [NEW]  # OLD forgotten

    with pytest.raises(CommandError, match="cannot be decrypted"):
        call_command("rotate_secrets", stdout=io.StringIO())
    assert raw_tokens() == before
