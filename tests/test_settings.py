"""Settings come from the environment and refuse to start on a value they cannot use, naming the variable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.isolated import run_django

FERNET_KEY = Fernet.generate_key().decode()
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "s" * 10 + "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ-_",
    "FIELD_ENCRYPTION_KEYS": FERNET_KEY,
    "ALLOWED_HOSTS": "portal.example.com",
    "PUBLIC_BASE_URL": "https://portal.example.com",
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_PROXY_SSL_HEADER": "true",
}

SHOW_SETTINGS = """
import json
from django.conf import settings
print(json.dumps({
    "database": settings.DATABASES["default"]["ENGINE"],
    "database_name": str(settings.DATABASES["default"]["NAME"]),
    "cache": settings.CACHES["default"]["BACKEND"],
    "broker": settings.CELERY_BROKER_URL,
    "broker_queue": settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("data_folder_in"),
    "public_base_url": settings.PUBLIC_BASE_URL,
    "csrf_trusted_origins": settings.CSRF_TRUSTED_ORIGINS,
    "debug": settings.DEBUG,
    "routing_budget_ms": settings.ROUTING_BUDGET_MS,
}))
"""


def startup_error(result: subprocess.CompletedProcess[str]) -> str:
    """The last line of a failed start: the exception Django's setup raised."""
    assert result.returncode != 0, f"settings accepted the value:\n{result.stdout}"
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ROUTING_BUDGET_MS", "fast"),
        ("ROUTING_BUDGET_MS", "0"),
        ("ROUTING_CACHE_SECONDS", "-5"),
        ("WEBHOOK_MAX_BODY_BYTES", "64k"),
        ("WEBHOOK_MAX_BODY_BYTES", "-1"),
        ("OUTBOUND_ALLOWED_NETWORKS", "10.0.0.0/33"),
        ("OUTBOUND_ALLOWED_NETWORKS", "intranet"),
        ("OUTBOUND_ALLOW_PRIVATE_NETWORKS", "sometimes"),
        ("OUTBOUND_CA_BUNDLE", "/nonexistent/rostelecom-ca.pem"),
        ("DATABASE_URL", "nonsense"),
        ("DATABASE_URL", "postgres://postgres@db:notaport/callbridge"),
        ("DATABASE_URL", "mysqlx://db/callbridge"),
        ("CACHE_URL", "nope://cache"),
        ("CELERY_BROKER_URL", "redis"),
        ("DEBUG", "ture"),
        ("SECURE_SSL_REDIRECT", "yess"),
        ("SECURE_HSTS_SECONDS", "a year"),
        ("PUBLIC_BASE_URL", "portal.example.com"),
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("LOG_LEVEL", "LOUD"),
        ("OUTBOX_TIME_SCALE", "0"),
        ("RECORDING_MAX_BYTES", "big"),
        ("RECORDING_FETCH_HOURS", "-1"),
        ("RECORDS_THROTTLE", "lots"),
        ("FIELD_ENCRYPTION_KEYS", "not-a-fernet-key"),
    ],
)
def test_a_malformed_variable_stops_startup_naming_it(tmp_path: Path, name: str, value: str):
    variables = {"DEBUG": "true", name: value}
    error = startup_error(run_django("", tmp_path, **variables))
    assert error.startswith("django.core.exceptions.ImproperlyConfigured: ")
    assert f"{name}:" in error


def test_outside_debug_a_missing_secret_key_stops_startup(tmp_path: Path):
    error = startup_error(run_django("", tmp_path, DEBUG="false", FIELD_ENCRYPTION_KEYS=FERNET_KEY))
    assert error == "django.core.exceptions.ImproperlyConfigured: SECRET_KEY: must be set when DEBUG is off"


def test_outside_debug_missing_field_encryption_keys_stop_startup(tmp_path: Path):
    error = startup_error(run_django("", tmp_path, DEBUG="false", SECRET_KEY=PRODUCTION["SECRET_KEY"]))
    assert error == (
        "django.core.exceptions.ImproperlyConfigured: FIELD_ENCRYPTION_KEYS: must be set when DEBUG is off"
    )


def test_debug_with_nothing_else_set_runs_on_sqlite_database_cache_and_filesystem_broker(tmp_path: Path):
    result = run_django(SHOW_SETTINGS, tmp_path, DEBUG="true")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["database"] == "django.db.backends.sqlite3"
    assert shown["database_name"] == str(tmp_path / "callbridge.sqlite3")
    assert shown["cache"] == "django.core.cache.backends.db.DatabaseCache"
    assert shown["broker"] == "filesystem://"
    # The filesystem transport does not create its folder; settings do, so a fresh checkout needs no setup.
    assert shown["broker_queue"] == str(tmp_path / "broker" / "queue")
    assert (tmp_path / "broker" / "queue").is_dir()
    assert shown["routing_budget_ms"] == 1500


def test_public_base_url_follows_port_unless_set(tmp_path: Path):
    shown = json.loads(run_django(SHOW_SETTINGS, tmp_path, DEBUG="true", PORT="8765").stdout)
    assert shown["public_base_url"] == "http://localhost:8765"

    shown = json.loads(
        run_django(
            SHOW_SETTINGS, tmp_path, DEBUG="true", PUBLIC_BASE_URL="https://pbx.example.com/portal/"
        ).stdout
    )
    assert shown["public_base_url"] == "https://pbx.example.com/portal"
    assert shown["csrf_trusted_origins"] == ["https://pbx.example.com"]


def test_production_like_variables_pass_the_deployment_check_at_warning_level(tmp_path: Path):
    result = run_django(
        "from django.core.management import call_command\n"
        "call_command('check', deploy=True, fail_level='WARNING')\n",
        tmp_path,
        **PRODUCTION,
    )
    assert result.returncode == 0, result.stderr


def test_the_deployment_check_fails_when_debug_is_on(tmp_path: Path):
    result = run_django(
        "from django.core.management import call_command\n"
        "call_command('check', deploy=True, fail_level='WARNING')\n",
        tmp_path,
        **{**PRODUCTION, "DEBUG": "true"},
    )
    assert result.returncode != 0
    assert "security.W018" in result.stderr


# ---- development keys (issue 15 item 14) ----


@pytest.mark.parametrize("switch", [{"CALLBRIDGE_TESTING": "1"}, {}], ids=["CALLBRIDGE_TESTING", "plain"])
def test_outside_debug_no_test_switch_brings_the_development_keys_back(tmp_path: Path, switch):
    """Neither CALLBRIDGE_TESTING nor importing pytest lets a DEBUG-off process start without keys."""
    error = startup_error(run_django("import pytest\n", tmp_path, DEBUG="false", **switch))
    assert "SECRET_KEY" in error


def test_the_test_settings_module_may_use_the_development_keys(tmp_path: Path):
    result = run_django(
        "from django.conf import settings\nfrom portal import development_keys\n"
        "print(settings.SECRET_KEY == development_keys.SECRET_KEY)\n",
        tmp_path,
        DEBUG="false",
        DJANGO_SETTINGS_MODULE="portal.settings_test",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@pytest.mark.parametrize("name", ["SECRET_KEY", "FIELD_ENCRYPTION_KEYS"])
def test_the_deployment_check_fails_when_a_development_key_is_configured(tmp_path: Path, name: str):
    from portal import development_keys

    value = (
        development_keys.SECRET_KEY
        if name == "SECRET_KEY"
        else f"{FERNET_KEY},{development_keys.FIELD_ENCRYPTION_KEY}"
    )
    result = run_django(
        "from django.core.management import call_command\n"
        "call_command('check', deploy=True, fail_level='WARNING')\n",
        tmp_path,
        **{**PRODUCTION, name: value},
    )
    assert result.returncode != 0
    assert ("callbridge.E001" if name == "SECRET_KEY" else "callbridge.E002") in result.stderr
