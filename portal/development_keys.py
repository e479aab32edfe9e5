"""The fixed keys a developer's DEBUG run and the test settings module use when none are configured.

Public (they are in the repository): anything signed or encrypted with them is readable by anyone. Outside
DEBUG only portal.settings_test may fall back to them, and `manage.py check --deploy` fails when either is
configured (portal.checks), so a production deploy cannot run on them by accident.
"""

from __future__ import annotations

SECRET_KEY = "insecure-development-key-only-for-debug-and-tests-0123456789abcdef"
FIELD_ENCRYPTION_KEY = "ZGV2ZWxvcG1lbnQta2V5LW9ubHktZm9yLWRlYnVnLTA="
