"""Callbridge settings: everything comes from the environment (django-environ).

Every variable is listed in README.md ("Configuration") and `.env.example`. A malformed value raises
`ImproperlyConfigured` naming the variable; outside DEBUG a missing SECRET_KEY or FIELD_ENCRYPTION_KEYS does too.
With nothing set the portal runs on a SQLite file, the database cache and kombu's filesystem broker, so a
fresh laptop needs no server.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import environ
from celery.schedules import schedule
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from portal import development_keys

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CALLBRIDGE_VAR_DIR", BASE_DIR / "var"))

env = environ.Env()
if os.environ.get("CALLBRIDGE_READ_DOTENV", "1") == "1" and (BASE_DIR / ".env").exists():
    env.read_env(str(BASE_DIR / ".env"))


def _get(name: str, cast: Any, default: Any) -> Any:
    """Read one variable; a value that does not parse names the variable in the error."""
    try:
        return cast(name, default=default)
    except ImproperlyConfigured as exc:
        if str(exc).startswith(f"{name}:"):
            raise
        # django-environ's own messages ("Invalid cache schema nope") do not say which variable was wrong.
        raise ImproperlyConfigured(f"{name}: invalid value {os.environ.get(name)!r} ({exc})") from exc
    except Exception as exc:  # ValueError, TypeError from a cast
        raise ImproperlyConfigured(f"{name}: invalid value {os.environ.get(name)!r} ({exc})") from exc


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(name: str, default: bool) -> bool:
    """A strict boolean: django-environ reads any unknown word as False, so DEBUG=ture would silently turn
    debugging off and `SECURE_SSL_REDIRECT=yess` would silently serve plain HTTP."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}: expected true or false, got {os.environ.get(name)!r}")


def _positive(name: str, value: float) -> float:
    if value <= 0:
        raise ImproperlyConfigured(f"{name}: must be positive, got {value!r}")
    return value


def _not_negative(name: str, value: int) -> int:
    if value < 0:
        raise ImproperlyConfigured(f"{name}: must not be negative, got {value!r}")
    return value


def _rate(name: str, value: str) -> str:
    if not re.fullmatch(r"\d+/(s|sec|m|min|h|hour|d|day)", value):
        raise ImproperlyConfigured(f"{name}: expected a rate like 60/min, got {value!r}")
    return value


DEBUG = _bool("DEBUG", False)
TESTING = os.environ.get("CALLBRIDGE_TESTING") == "1" or "pytest" in sys.modules

SECRET_KEY = _get("SECRET_KEY", env.str, "")
# Older SECRET_KEYs still accepted when checking signatures: recording links are HMACs under SECRET_KEY, so
# rotating it without listing the old key here would break every link CRMs hold (docs/security.md).
SECRET_KEY_FALLBACKS = [k.strip() for k in _get("SECRET_KEY_FALLBACKS", env.str, "").split(",") if k.strip()]
FIELD_ENCRYPTION_KEYS = [
    k.strip() for k in _get("FIELD_ENCRYPTION_KEYS", env.str, "").split(",") if k.strip()
]
# Outside DEBUG the keys must be configured, test run or not: only portal.settings_test supplies the public
# development keys (through the environment), and `check --deploy` refuses them (portal.checks).
if not DEBUG:
    if not SECRET_KEY:
        raise ImproperlyConfigured("SECRET_KEY: must be set when DEBUG is off")
    if not FIELD_ENCRYPTION_KEYS:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS: must be set when DEBUG is off")
if not SECRET_KEY:
    SECRET_KEY = development_keys.SECRET_KEY
if not FIELD_ENCRYPTION_KEYS:
    FIELD_ENCRYPTION_KEYS = [development_keys.FIELD_ENCRYPTION_KEY]
for _position, _key in enumerate(FIELD_ENCRYPTION_KEYS, start=1):
    # Checked here rather than at the first decryption, so a mistyped key stops the deploy, not a webhook.
    try:
        Fernet(_key.encode())
    except (ValueError, TypeError):
        raise ImproperlyConfigured(
            f"FIELD_ENCRYPTION_KEYS: key #{_position} is not a Fernet key (32 url-safe base64-encoded bytes)"
        ) from None

ALLOWED_HOSTS = _get("ALLOWED_HOSTS", env.list, ["localhost", "127.0.0.1", "[::1]", "testserver"])
PORT = _get("PORT", env.int, 8000)
if not 0 < PORT < 65536:
    raise ImproperlyConfigured(f"PORT: expected 1-65535, got {PORT!r}")
_public_base_url = _get("PUBLIC_BASE_URL", env.url, f"http://localhost:{PORT}")
if _public_base_url.scheme not in {"http", "https"} or not _public_base_url.hostname:
    raise ImproperlyConfigured(
        f"PUBLIC_BASE_URL: expected an absolute http(s) URL such as https://portal.example.com, "
        f"got {_public_base_url.geturl()!r}"
    )
PUBLIC_BASE_URL = _public_base_url.geturl().rstrip("/")
LOG_LEVEL = _get("LOG_LEVEL", env.str, "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL: unknown level {LOG_LEVEL!r}")

SECURE_SSL_REDIRECT = _bool("SECURE_SSL_REDIRECT", False)
# Only behind a proxy that always sets X-Forwarded-Proto itself; otherwise a client could claim HTTPS.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if _bool("SECURE_PROXY_SSL_HEADER", False) else None
)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = not DEBUG and PUBLIC_BASE_URL.startswith("https://")
SECURE_HSTS_SECONDS = _not_negative(
    "SECURE_HSTS_SECONDS", _get("SECURE_HSTS_SECONDS", env.int, 0 if DEBUG else 31536000)
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = False
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# An origin is scheme and host only: a PUBLIC_BASE_URL with a path would never match the Origin header.
CSRF_TRUSTED_ORIGINS = [f"{_public_base_url.scheme}://{_public_base_url.netloc}"]
SILENCED_SYSTEM_CHECKS = ["security.W021"]  # HSTS preload is the operator's decision

# Behaviour
ROUTING_BUDGET_MS = int(_positive("ROUTING_BUDGET_MS", _get("ROUTING_BUDGET_MS", env.int, 1500)))
ROUTING_CACHE_SECONDS = _not_negative("ROUTING_CACHE_SECONDS", _get("ROUTING_CACHE_SECONDS", env.int, 300))
WEBHOOK_MAX_BODY_BYTES = int(
    _positive("WEBHOOK_MAX_BODY_BYTES", _get("WEBHOOK_MAX_BODY_BYTES", env.int, 65536))
)
OUTBOX_TIME_SCALE = _positive("OUTBOX_TIME_SCALE", _get("OUTBOX_TIME_SCALE", env.float, 1.0))
# Fencing (docs/reliability.md): the outbound work of one claim (connect + send + read of every body) ends at
# OUTBOUND_DEADLINE_SECONDS; the task's soft and hard limits and the job's lease follow, each
# OUTBOX_LEASE_MARGIN_SECONDS later, so a worker is stopped before anyone else may claim its jobs.
OUTBOUND_DEADLINE_SECONDS = _positive(
    "OUTBOUND_DEADLINE_SECONDS", _get("OUTBOUND_DEADLINE_SECONDS", env.float, 60.0)
)
OUTBOX_LEASE_MARGIN_SECONDS = _positive(
    "OUTBOX_LEASE_MARGIN_SECONDS", _get("OUTBOX_LEASE_MARGIN_SECONDS", env.float, 20.0)
)
# A call with no end and no event for this long is reconciled through its PBX adapter.
RECONCILE_AFTER_SECONDS = _positive(
    "RECONCILE_AFTER_SECONDS", _get("RECONCILE_AFTER_SECONDS", env.float, 900.0)
)
# Request paths (webhooks, routing, probes, /records) wait at most this long for the cache, then fall back.
REQUEST_CACHE_TIMEOUT_SECONDS = _positive(
    "REQUEST_CACHE_TIMEOUT_SECONDS", _get("REQUEST_CACHE_TIMEOUT_SECONDS", env.float, 0.2)
)
# Bulkheads for routing: the lookup threads one tenant may hold at once, and how long an abandoned lookup
# (the routing deadline passed) may still run so that its late answer is cached for the next call.
ROUTING_TENANT_THREADS = int(_positive("ROUTING_TENANT_THREADS", _get("ROUTING_TENANT_THREADS", env.int, 8)))
ROUTING_LOOKUP_SECONDS = _positive("ROUTING_LOOKUP_SECONDS", _get("ROUTING_LOOKUP_SECONDS", env.float, 5.0))
# The relay keeps at most this many claims (one Celery task each: a job or a batch) published and not yet done,
# so a backlog after an outage reaches the broker as fast as workers take it, not in one burst.
OUTBOX_MAX_IN_FLIGHT = int(_positive("OUTBOX_MAX_IN_FLIGHT", _get("OUTBOX_MAX_IN_FLIGHT", env.int, 64)))
# The inbox processor (manage.py process_inbox): how often it looks for stored events (one index lookup when
# none waits), and how often one event is tried before it is marked failed and skipped.
INBOX_POLL_SECONDS = _positive("INBOX_POLL_SECONDS", _get("INBOX_POLL_SECONDS", env.float, 0.1))
INBOX_MAX_ATTEMPTS = int(_positive("INBOX_MAX_ATTEMPTS", _get("INBOX_MAX_ATTEMPTS", env.int, 5)))
# The simulated providers (sandbox PBX and CRM) and their /sandbox/ pages: on for development, off in production
# unless asked for. They stay registered either way; when off they refuse to work.
SANDBOX_ENABLED = _bool("SANDBOX_ENABLED", DEBUG)

# Outbound HTTP
OUTBOUND_ALLOW_PRIVATE_NETWORKS = _bool("OUTBOUND_ALLOW_PRIVATE_NETWORKS", False)


def _networks(name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [
            ipaddress.ip_network(n.strip(), strict=False) for n in env.list(name, default=[]) if n.strip()
        ]
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from exc


OUTBOUND_ALLOWED_NETWORKS = _networks("OUTBOUND_ALLOWED_NETWORKS")
# Reverse proxies whose X-Forwarded-For is believed (recording-link throttle and audit log); empty = none.
TRUSTED_PROXY_NETWORKS = _networks("TRUSTED_PROXY_NETWORKS")
OUTBOUND_CA_BUNDLE = _get("OUTBOUND_CA_BUNDLE", env.str, "")
if OUTBOUND_CA_BUNDLE and not Path(OUTBOUND_CA_BUNDLE).is_file():
    raise ImproperlyConfigured(f"OUTBOUND_CA_BUNDLE: no such file {OUTBOUND_CA_BUNDLE!r}")

# Recordings
RECORDINGS_DIR = Path(_get("RECORDINGS_DIR", env.str, str(VAR_DIR / "recordings")))
RECORDINGS_STORAGE_BACKEND = _get(
    "RECORDINGS_STORAGE_BACKEND", env.str, "django.core.files.storage.FileSystemStorage"
)
try:
    RECORDINGS_STORAGE_OPTIONS = json.loads(_get("RECORDINGS_STORAGE_OPTIONS", env.str, "") or "{}")
except ValueError as exc:
    raise ImproperlyConfigured(f"RECORDINGS_STORAGE_OPTIONS: not JSON ({exc})") from exc
if not isinstance(RECORDINGS_STORAGE_OPTIONS, dict):
    raise ImproperlyConfigured("RECORDINGS_STORAGE_OPTIONS: must be a JSON object")
RECORDING_MAX_BYTES = int(
    _positive("RECORDING_MAX_BYTES", _get("RECORDING_MAX_BYTES", env.int, 50 * 1024 * 1024))
)
# The slowest download a recording fetch accepts: with RECORDING_MAX_BYTES it sets the fetch's own deadline,
# task limits and lease (calls/outbox.py `timing`).
RECORDING_MIN_BYTES_PER_SECOND = int(
    _positive("RECORDING_MIN_BYTES_PER_SECOND", _get("RECORDING_MIN_BYTES_PER_SECOND", env.int, 256 * 1024))
)
RECORDING_FETCH_HOURS = _positive("RECORDING_FETCH_HOURS", _get("RECORDING_FETCH_HOURS", env.float, 6.0))
RECORDS_THROTTLE = _rate("RECORDS_THROTTLE", _get("RECORDS_THROTTLE", env.str, "60/min"))

# Read API, metrics and logs
API_THROTTLE = _rate("API_THROTTLE", _get("API_THROTTLE", env.str, "600/min"))
METRICS_TOKEN = _get("METRICS_TOKEN", env.str, "")
# Read by prometheus-client itself (multiprocess mode for several gunicorn workers); checked here so a typo
# stops the deploy instead of the first scrape.
_multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if _multiproc_dir and not Path(_multiproc_dir).is_dir():
    raise ImproperlyConfigured(f"PROMETHEUS_MULTIPROC_DIR: no such directory {_multiproc_dir!r}")
LOG_FORMAT = _get("LOG_FORMAT", env.str, "text").lower()
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT: expected text or json, got {LOG_FORMAT!r}")
# E-mail: only when EMAIL_URL is set (smtp+tls://USER:PASSWORD@HOST:587) are invitation links also mailed;
# without it nothing is sent and the admin hands the link over.
_email_url = _get("EMAIL_URL", env.str, "")
EMAIL_URL_CONFIGURED = bool(_email_url)
if _email_url:
    try:
        globals().update(environ.Env.email_url_config(_email_url))
    except Exception as exc:
        raise ImproperlyConfigured(f"EMAIL_URL: invalid value ({exc})") from exc
DEFAULT_FROM_EMAIL = _get("DEFAULT_FROM_EMAIL", env.str, "callbridge@localhost")

# Abuse limits (docs/security.md). Click-to-call is counted in the database per CRM connection, so it holds
# when the cache is down; authentication failures are counted per client address on the shared cache.
CLICK_TO_CALL_THROTTLE = _rate("CLICK_TO_CALL_THROTTLE", _get("CLICK_TO_CALL_THROTTLE", env.str, "30/min"))
WEBHOOK_AUTH_FAILURE_THROTTLE = _rate(
    "WEBHOOK_AUTH_FAILURE_THROTTLE", _get("WEBHOOK_AUTH_FAILURE_THROTTLE", env.str, "20/min")
)

INSTALLED_APPS = [
    "portal.apps.CallbridgeAdminConfig",  # django.contrib.admin, with the tenant dashboard as its index
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.forms",  # widget templates of the project's own (templates/admin/callbridge/map_widget.html)
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "integrations",
    "calls",
    "api",
    "integrations.providers.sandbox",
]

MIDDLEWARE = [
    # Outermost, so it counts every /hooks/ answer, whichever layer produced it.
    "portal.metrics.WebhookMetricsMiddleware",
    "portal.logs.LogContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves collectstatic's files from the web process itself: one container needs no proxy rule for them.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Times shown to a tenant's staff are in the tenant's zone (integrations/localtime.py).
    "integrations.localtime.TenantTimeZoneMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a lockout into its 429 page.
    "axes.middleware.AxesMiddleware",
]

# Admin login lockout (django-axes, docs/security.md): 5 failures for one username from one address lock that
# pair for 15 minutes; the attempts live in the database every web process shares. The address is taken as the
# throttles take it (TRUSTED_PROXY_NETWORKS). Unlock early: `manage.py axes_reset_username NAME`.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = dt.timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "integrations.throttles.client_address"
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_VERBOSE = False

ROOT_URLCONF = "portal.urls"
FORM_RENDERER = "django.forms.renderers.TemplatesSetting"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# Services
_sqlite_path = VAR_DIR / "callbridge.sqlite3"
DATABASES = {"default": _get("DATABASE_URL", env.db_url, f"sqlite:///{_sqlite_path}")}
_db = DATABASES["default"]
if _db.get("ENGINE") not in {"django.db.backends.sqlite3", "django.db.backends.postgresql"} or not _db.get(
    "NAME"
):
    raise ImproperlyConfigured(
        f"DATABASE_URL: expected postgres://USER:PASSWORD@HOST:PORT/NAME or sqlite:////absolute/path, "
        f"got {os.environ.get('DATABASE_URL')!r}"
    )
if _db["ENGINE"] == "django.db.backends.sqlite3":
    if _db["NAME"] != ":memory:":
        Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets the web server, the worker and beat read while one of them writes; the busy timeout makes a
    # writer wait for the lock instead of failing at once.
    _db.setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
        }
    )
    # A file, not shared-cache memory: tests that run a worker or two relays in threads need real locking.
    _db.setdefault("TEST", {}).setdefault("NAME", str(VAR_DIR / f"test-callbridge-{os.getpid()}.sqlite3"))
else:
    _db.setdefault("CONN_MAX_AGE", 60)
    _db.setdefault("CONN_HEALTH_CHECKS", True)
    if TESTING:
        # One test database per run, so two runs on one machine (CI and a developer) never drop each other's.
        _db.setdefault("TEST", {}).setdefault("NAME", f"test_callbridge_{os.getpid()}")

CACHES = {"default": _get("CACHE_URL", env.cache_url, "dbcache://callbridge_cache")}
CACHES["default"].setdefault("TIMEOUT", 300)
if CACHES["default"]["BACKEND"].endswith("DatabaseCache"):
    # The default cull at 300 entries would drop rate-limiter seats and routing answers under load.
    CACHES["default"].setdefault("OPTIONS", {}).setdefault("MAX_ENTRIES", 100000)
# The same cache for request paths, with short socket timeouts (portal/fastcache.py adds a per-process
# back-off): a frozen Redis costs a webhook, a routing answer or a probe REQUEST_CACHE_TIMEOUT_SECONDS at most.
CACHES["request"] = {**CACHES["default"], "OPTIONS": dict(CACHES["default"].get("OPTIONS", {}))}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # redis-py waits forever by default: a frozen Redis would hang every request that touches the cache.
    CACHES["default"].setdefault("OPTIONS", {}).update({"socket_connect_timeout": 3, "socket_timeout": 5})
    CACHES["request"]["OPTIONS"].update(
        {
            "socket_connect_timeout": REQUEST_CACHE_TIMEOUT_SECONDS,
            "socket_timeout": REQUEST_CACHE_TIMEOUT_SECONDS,
            "retry_on_timeout": False,
        }
    )

CELERY_BROKER_URL = _get("CELERY_BROKER_URL", env.str, "filesystem://")
if "://" not in CELERY_BROKER_URL:
    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL: expected a URL such as redis://HOST:6379/0, got {CELERY_BROKER_URL!r}"
    )
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # A test run gets a broker folder of its own, so two runs on one machine never consume each other's tasks.
    _broker_dir = VAR_DIR / (f"broker-test-{os.getpid()}" if TESTING else "broker")
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
    # kombu's filesystem transport does not create its folders; the web server, the worker and beat share them.
    for _folder in ("queue", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Bounded socket timeouts: a frozen Redis must not hang a worker or the relay for long. Visibility
    # timeout ≥ 2 × the longest task; no countdown in this project exceeds 60 s.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "socket_timeout": 5,
        "socket_connect_timeout": 3,
        # Longer than the longest task (a recording fetch's hard limit): a message redelivered while its
        # task still runs would start a second worker on the same claim.
        "visibility_timeout": max(
            300,
            2
            * (
                OUTBOUND_DEADLINE_SECONDS
                + RECORDING_MAX_BYTES / RECORDING_MIN_BYTES_PER_SECOND
                + 3 * OUTBOX_LEASE_MARGIN_SECONDS
            ),
        ),
        "retry_on_timeout": True,
    }
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Processes of `celery -A portal worker` (its --concurrency wins). Outbox tasks mostly wait for CRMs and PBXs,
# so twice the cores keeps them busy (measured: a RetailCRM backlog reached the API's rate limit with 4 on two
# cores, 65 % of it with 2; with 8, waits for the shared rate limiter cost more than they won).
CELERY_WORKER_CONCURRENCY = int(
    _positive("WORKER_CONCURRENCY", _get("WORKER_CONCURRENCY", env.int, 2 * (os.cpu_count() or 1)))
)
# Defaults for every task; an outbox task gets its kind's own limits (calls/outbox.py `timing`), all of them
# below the lease of the jobs it sends.
CELERY_TASK_SOFT_TIME_LIMIT = OUTBOUND_DEADLINE_SECONDS + OUTBOX_LEASE_MARGIN_SECONDS
CELERY_TASK_TIME_LIMIT = OUTBOUND_DEADLINE_SECONDS + 2 * OUTBOX_LEASE_MARGIN_SECONDS
CELERY_TASK_IGNORE_RESULT = True
# Celery's Django fixup closes the database connection around every task unless this is set, so each outbox task
# would open a new PostgreSQL connection (measured: ~10 % of a worker's time in a RetailCRM backlog). With it,
# the worker keeps its connection and Django's own rule decides (CONN_MAX_AGE, CONN_HEALTH_CHECKS, a connection
# that failed is dropped): portal/celery.py runs close_old_connections() around each task, as Django does
# around each request. On SQLite (CONN_MAX_AGE 0) that still closes after every task.
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_RESULT_BACKEND = None
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = 10
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    # expires: a relay or inbox pass still queued when the next is due is dropped, not run late in a pile.
    "outbox-relay": {"task": "calls.tasks.relay", "schedule": schedule(1.5), "options": {"expires": 1.5}},
    "inbox-sweep": {"task": "calls.tasks.process_inbox", "schedule": schedule(5), "options": {"expires": 5}},
    "periodic-jobs": {"task": "calls.tasks.run_periodic", "schedule": schedule(60)},
    "reconcile-silent-calls": {
        "task": "calls.tasks.reconcile_silent_calls",
        "schedule": schedule(min(60.0, RECONCILE_AFTER_SECONDS / 3)),
        "options": {"expires": min(60.0, RECONCILE_AFTER_SECONDS / 3)},
    },
    "recordings-retention": {"task": "calls.tasks.purge_expired_recordings", "schedule": schedule(24 * 3600)},
    # Admin operations (Test connection, directory import) whose message was lost: run by the sweep.
    "connection-operations": {
        "task": "integrations.tasks.sweep_connection_operations",
        "schedule": schedule(60),
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# The admin speaks Russian by default; English is one click away (the switch in the admin's header). What is
# sent to providers and written to logs is never translated (docs/admin.md).
LANGUAGE_CODE = "ru"
LANGUAGES = [("ru", "Русский"), ("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# The project's own static files: the admin's scripts and the vendored, pinned chart library (static/vendor/).
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # WhiteNoise serves what collectstatic gathered, gzip-compressed; no manifest, so a test run or a
    # checkout without collectstatic still renders pages.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    "recordings": {
        "BACKEND": RECORDINGS_STORAGE_BACKEND,
        "OPTIONS": (
            {"location": str(RECORDINGS_DIR), **RECORDINGS_STORAGE_OPTIONS}
            if RECORDINGS_STORAGE_BACKEND.endswith("FileSystemStorage")
            else RECORDINGS_STORAGE_OPTIONS
        ),
    },
}
# One-time tokens shown to admins travel in messages: keep them server-side, not in a cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Callbridge read API",
    "DESCRIPTION": "A tenant's call history. Authenticate with `Authorization: Bearer <tenant API key>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Only /api/v1/ is the public API; the provider hooks speak each vendor's own protocol.
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "PREPROCESSING_HOOKS": ["api.schema.only_api_paths"],
    # Swagger UI from the drf-spectacular-sidecar package: served by the portal, no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "portal.logs.ContextFilter"},
        "routine": {"()": "portal.logs.RoutineTaskFilter"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "portal.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["context", "routine"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
