"""System checks of our own: `manage.py check --deploy` fails when a development key is configured."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register

from portal import development_keys


@register(Tags.security, deploy=True)
def development_keys_in_use(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors = []
    if settings.SECRET_KEY == development_keys.SECRET_KEY:
        errors.append(
            Error(
                "SECRET_KEY is the public development key.",
                hint="Set SECRET_KEY to 50+ random characters (docs/security.md).",
                id="callbridge.E001",
            )
        )
    if development_keys.FIELD_ENCRYPTION_KEY in settings.FIELD_ENCRYPTION_KEYS:
        errors.append(
            Error(
                "FIELD_ENCRYPTION_KEYS contains the public development key.",
                hint="Generate a Fernet key, put it first, run `manage.py rotate_secrets`, then remove the "
                "development key (docs/security.md).",
                id="callbridge.E002",
            )
        )
    return errors
