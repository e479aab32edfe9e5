"""Settings of the test suite (pyproject's DJANGO_SETTINGS_MODULE): portal.settings, plus the development keys
when the environment gives none. The only module that may use them without DEBUG (docs/security.md)."""

from __future__ import annotations

import os

from portal import development_keys

os.environ.setdefault("SECRET_KEY", development_keys.SECRET_KEY)
os.environ.setdefault("FIELD_ENCRYPTION_KEYS", development_keys.FIELD_ENCRYPTION_KEY)

from portal.settings import *  # noqa: F403
