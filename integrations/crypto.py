"""Secrets at rest: Fernet with key rotation (MultiFernet), keys from FIELD_ENCRYPTION_KEYS."""

from __future__ import annotations

import json
import secrets
from functools import cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"FIELD_ENCRYPTION_KEYS: not a list of Fernet keys ({exc})") from exc


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt_text(text: str) -> str:
    return fernet().encrypt(text.encode()).decode()


def decrypt_text(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS: a stored secret cannot be decrypted with the configured keys"
        ) from exc


def new_token() -> str:
    """A token the portal issues to a provider: 32 random bytes (256 bits), URL-safe."""
    return secrets.token_urlsafe(32)


class EncryptedJSONField(models.TextField):
    """A dict stored as one Fernet token. The plaintext never reaches the database."""

    description = "JSON encrypted with Fernet"

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> dict[str, Any]:
        if not value:
            return {}
        return json.loads(decrypt_text(value))

    def to_python(self, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        if not value:
            return {}
        if isinstance(value, str) and value.startswith("{"):
            return json.loads(value)
        return json.loads(decrypt_text(value))

    def get_prep_value(self, value: Any) -> str:
        return encrypt_text(json.dumps(value or {}, sort_keys=True))

    def value_to_string(self, obj: Any) -> str:
        return "{}"  # never serialise secrets (dumpdata, admin history)
