"""Run a snippet of Django code in a fresh interpreter with a chosen environment.

Settings are read once per process, and under pytest they treat the run as a test run; a subprocess that never
imports pytest sees exactly what `manage.py` or a worker would see for the same variables.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Every variable portal/settings.py reads, plus the switches that change how it reads them.
SETTINGS_VARIABLES = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "CACHE_URL",
    "SECRET_KEY",
    "FIELD_ENCRYPTION_KEYS",
    "DEBUG",
    "ALLOWED_HOSTS",
    "SECURE_SSL_REDIRECT",
    "SECURE_PROXY_SSL_HEADER",
    "SECURE_HSTS_SECONDS",
    "PUBLIC_BASE_URL",
    "PORT",
    "LOG_LEVEL",
    "ROUTING_BUDGET_MS",
    "ROUTING_CACHE_SECONDS",
    "WEBHOOK_MAX_BODY_BYTES",
    "OUTBOX_TIME_SCALE",
    "OUTBOUND_DEADLINE_SECONDS",
    "OUTBOX_LEASE_MARGIN_SECONDS",
    "RECONCILE_AFTER_SECONDS",
    "REQUEST_CACHE_TIMEOUT_SECONDS",
    "ROUTING_TENANT_THREADS",
    "ROUTING_LOOKUP_SECONDS",
    "RECORDING_MIN_BYTES_PER_SECOND",
    "OUTBOUND_ALLOW_PRIVATE_NETWORKS",
    "OUTBOUND_ALLOWED_NETWORKS",
    "OUTBOUND_CA_BUNDLE",
    "RECORDINGS_DIR",
    "RECORDINGS_STORAGE_BACKEND",
    "RECORDING_MAX_BYTES",
    "RECORDING_FETCH_HOURS",
    "RECORDS_THROTTLE",
    "API_THROTTLE",
    "METRICS_TOKEN",
    "LOG_FORMAT",
    "PROMETHEUS_MULTIPROC_DIR",
    "CALLBRIDGE_VAR_DIR",
    "CALLBRIDGE_READ_DOTENV",
    "CALLBRIDGE_TESTING",
    "DJANGO_SETTINGS_MODULE",
)


def run_django(code: str, var_dir: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run `code` after django.setup() with only `variables` set (no .env, files under `var_dir`)."""
    environment = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
    environment.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        CALLBRIDGE_READ_DOTENV="0",  # a developer's .env must not decide the outcome
        CALLBRIDGE_VAR_DIR=str(var_dir),
    )
    environment.update(variables)
    script = "import django\ndjango.setup()\n" + code
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nothing else takes it) but never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
