"""Provider interfaces and the explicit registry.

`calls/` and the views know only this module. A provider is a class registered under its key in REGISTRY
(a dotted path, imported on first use, so nothing registers itself by import side effects and this module
imports no provider). Adding a provider = one module + its fixtures and tests + one line in REGISTRY.

A provider instance wraps one connection (`PbxConnection` or `CrmConnection`): `get_provider(conn)`.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.utils.module_loading import import_string
from django.utils.translation import gettext
from rest_framework.renderers import BaseRenderer

if TYPE_CHECKING:
    from django.http import HttpRequest
    from rest_framework.request import Request
    from rest_framework.response import Response

    from calls.events import NormalisedEvent
    from calls.models import Call, OriginateRequest, OutboundJob, Recording
    from integrations.models import Connection

PBX = "pbx"
CRM = "crm"

REGISTRY: dict[str, str] = {
    "rostelecom": "integrations.providers.rostelecom.RostelecomProvider",
    "mango": "integrations.providers.mango.MangoProvider",
    "planfix": "integrations.providers.planfix.PlanfixProvider",
    "retailcrm": "integrations.providers.retailcrm.RetailCrmProvider",
    "wirecrm": "integrations.providers.wirecrm.WireCrmProvider",
    "webhook": "integrations.providers.webhook.WebhookProvider",
    "sandbox_pbx": "integrations.providers.sandbox_pbx.SandboxPbxProvider",
    "sandbox_crm": "integrations.providers.sandbox_crm.SandboxCrmProvider",
}
SIDES: dict[str, str] = {
    "rostelecom": PBX,
    "mango": PBX,
    "planfix": CRM,
    "retailcrm": CRM,
    "wirecrm": CRM,
    "webhook": CRM,
    "sandbox_pbx": PBX,
    "sandbox_crm": CRM,
}
LABELS: dict[str, str] = {
    "rostelecom": "Rostelecom virtual PBX",
    "mango": "Mango Office VPBX",
    "planfix": "Planfix",
    "retailcrm": "RetailCRM",
    "wirecrm": "WireCRM",
    "webhook": "Signed webhooks (any system)",
    "sandbox_pbx": "Sandbox PBX (simulated, in the portal)",
    "sandbox_crm": "Sandbox CRM (simulated, in the portal)",
}
# Simulated providers whose far end lives in the portal. They stay registered whatever the settings (model
# choices and migrations never depend on them) and refuse to work at run time unless SANDBOX_ENABLED.
SANDBOX: frozenset[str] = frozenset({"sandbox_pbx", "sandbox_crm"})


def is_sandbox(key: str) -> bool:
    return key in SANDBOX


def provider_choices(side: str) -> list[tuple[str, str]]:
    return [(key, LABELS[key]) for key, s in SIDES.items() if s == side]


def provider_class(key: str) -> type[Provider]:
    try:
        return import_string(REGISTRY[key])
    except KeyError:
        raise UnknownProvider(key) from None


def get_provider(connection: Connection) -> Any:
    """The provider adapter for one connection (a PbxProvider or a CrmProvider)."""
    return provider_class(connection.provider)(connection)


class UnknownProvider(LookupError):
    pass


# ---------------------------------------------------------------------------------------------------------
# Settings and secrets schemas
# ---------------------------------------------------------------------------------------------------------

GENERATE = "generate"
MASK = "***"
REQUIRED = object()


class SchemaError(ValueError):
    """A settings or secrets value that the provider's schema refuses; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Field:
    """One key of a connection's `settings` or `secrets`.

    kind: str | url | int | bool | choice | choices (a list of `choices`) | map | extension. `issued` marks a secret the portal issues
    (it accepts "generate" and can be revealed to tenant admins); other secrets are write-only.
    """

    name: str
    kind: str = "str"
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    issued: bool = False
    help: Any = ""  # a string, or a lazily translated one

    def clean(self, value: Any) -> Any:
        if value is None or value == "":
            if self.required:
                raise SchemaError(self.name, "is required")
            return self.default
        kind = self.kind
        if kind in {"str", "secret"}:
            if not isinstance(value, str):
                raise SchemaError(self.name, "must be a string")
            return value.strip()
        if kind == "url":
            if not isinstance(value, str):
                raise SchemaError(self.name, "must be a URL string")
            parts = urlsplit(value.strip())
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise SchemaError(self.name, f"must be an http(s) URL, got {value!r}")
            return value.strip()
        if kind == "int":
            if isinstance(value, bool):
                raise SchemaError(self.name, "must be a whole number")
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise SchemaError(self.name, f"must be a whole number, got {value!r}") from None
            if self.minimum is not None and number < self.minimum:
                raise SchemaError(self.name, f"must be at least {self.minimum}")
            if self.maximum is not None and number > self.maximum:
                raise SchemaError(self.name, f"must be at most {self.maximum}")
            return number
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {
                "true",
                "1",
                "yes",
                "on",
                "false",
                "0",
                "no",
                "off",
            }:
                return value.lower() in {"true", "1", "yes", "on"}
            raise SchemaError(self.name, f"must be true or false, got {value!r}")
        if kind == "choice":
            if value not in self.choices:
                raise SchemaError(self.name, f"must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if kind == "choices":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SchemaError(self.name, "must be a list of strings")
            unknown = [v for v in value if v not in self.choices]
            if unknown:
                raise SchemaError(
                    self.name, f"unknown value(s) {', '.join(unknown)}; known: {', '.join(self.choices)}"
                )
            return list(dict.fromkeys(value))  # each once, in the order given
        if kind == "map":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise SchemaError(self.name, "must be an object of strings")
            return dict(value)
        raise SchemaError(self.name, f"unknown field kind {kind!r}")  # pragma: no cover - schema bug


def clean_mapping(fields: Sequence[Field], data: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """Validate a settings dict against fields: unknown keys are errors naming them; defaults filled in."""
    data = dict(data or {})
    known = {f.name for f in fields}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SchemaError(
            f"{what}.{unknown[0]}", f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    cleaned: dict[str, Any] = {}
    for f in fields:
        try:
            value = f.clean(data.get(f.name))
        except SchemaError as exc:
            raise SchemaError(f"{what}.{f.name}", str(exc).split(": ", 1)[-1]) from None
        if value is not None:
            cleaned[f.name] = value
    return cleaned


# ---------------------------------------------------------------------------------------------------------
# Data the pipeline and the adapters exchange
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobKind:
    """What an adapter declares about one kind of outbound job.

    window: how long after creation a transiently failing job keeps being retried before it is `dead`.
    ttl: a job not sent this long after it was due is `expired` (live pop-ups); None = never expires.
    expires_on_call_end: a pending job of this kind expires once its call has ended (pop-ups, IVR routes).
    batch_size: how many jobs of this kind to one connection the relay claims together (RetailCRM upload: 50).
    ordered: waits behind earlier jobs of the same call and connection (by event order key).
    """

    window: dt.timedelta = dt.timedelta(hours=72)
    ttl: dt.timedelta | None = None
    expires_on_call_end: bool = False
    batch_size: int = 1
    ordered: bool = True


POPUP = JobKind(ttl=dt.timedelta(minutes=2), expires_on_call_end=True)
FINAL = JobKind(window=dt.timedelta(hours=72))


@dataclass(frozen=True)
class JobSpec:
    """An outbound job an adapter asks the pipeline to create. `dedupe_key` is unique per connection, so
    asking twice (a repeated webhook, a recomputed state) creates one job."""

    kind: str
    dedupe_key: str
    payload: dict[str, Any] = field(default_factory=dict)
    call: Call | None = None
    order_key: str = ""
    due_at: dt.datetime | None = None
    # Overrides the kind's ttl for this one job (a connection setting, e.g. WireCRM popup_ttl_seconds).
    expires_at: dt.datetime | None = None


NoticeKind = Literal[
    "ringing",
    "dialing",
    "answered",
    "leg_cancelled",
    "leg_completed",
    "completed",
    "recording_stored",
    "recording_link_changed",
    "corrected",
]


@dataclass(frozen=True)
class Notice:
    """A change of a call that CRMs care about, computed once by the pipeline for every CRM adapter.

    ringing: an incoming call rings `extension` (opens a card); dialing: `extension` started an outgoing call;
    answered: `extension` took the call; leg_cancelled: `extension` rang but a colleague answered, or the
    caller hung up (closes that card); leg_completed: `extension` talked but the call went on to a colleague
    (a transfer), with its own `talk_seconds` when the events give them (closes that card); completed: the call
    is final for CRMs; recording_stored: the file is in storage and `/records/<token>` serves it;
    recording_link_changed: an admin revoked the link and `call.recording.public_url` is the new one (a CRM
    whose protocol can replace a link sends it again); corrected: a call that reconciliation closed as
    `unknown` got its real end, so its outcome changed after CRMs had the completion (a CRM whose protocol can
    amend a completed call sends it again).
    """

    kind: NoticeKind
    order_key: str
    extension: str = ""
    talk_seconds: int | None = None


@dataclass(frozen=True)
class RoutingQuery:
    caller: str  # E.164
    did: str  # E.164 or ""
    provider_call_id: str = ""  # the PBX call id, when the PBX gave one
    tenant_id: int | None = None
    call: Call | None = None


@dataclass(frozen=True)
class RoutingAnswer:
    extension: str = ""
    display_name: str = ""


@dataclass(frozen=True)
class DirectoryEntry:
    """One entry of a PBX directory. `kind` "group" is a routing target (a hunt group's number), not an
    employee; `sip_login` is the employee's login at the PBX, which events may name instead of the number."""

    number: str
    name: str = ""
    email: str = ""
    kind: str = "user"
    sip_login: str = ""


def inbound_action(action: str) -> str:
    """The method a PBX appended to the base URL, without stray slashes: a base URL pasted with a trailing
    slash gives `<id>//call_events`, some set-ups add a final `/`; both mean `call_events`."""
    return "/".join(part for part in (action or "").split("/") if part)


@dataclass(frozen=True)
class OriginateResult:
    correlation_id: str


@dataclass(frozen=True)
class CheckResult:
    """What `check_connection()` found: `ok`, a one-line `summary` in plain words for the admin, and the
    provider's own answer (truncated) in `detail`."""

    ok: bool
    summary: str
    detail: str = ""


ReconcileStatus = Literal["completed", "live", "unknown"]


@dataclass(frozen=True)
class ReconcileResult:
    """What the PBX said about a call that went silent: `completed` (with the events that complete it),
    `live` (ask again later) or `unknown` (the PBX does not know it; `note` says why)."""

    status: ReconcileStatus
    events: tuple[NormalisedEvent, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class SimulatedRequest:
    """One inbound request a PBX provider's `simulate()` would send: posted to PUBLIC_BASE_URL + `path`
    after waiting `delay_seconds`; `description` is printed for the person watching; `call_id` is the PBX's id
    of the simulated call (Call.provider_call_id once ingested)."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0
    description: str = ""
    call_id: str = ""


class ProviderError(Exception):
    """A provider refused or could not be reached. `permanent` decides between retry and failure."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        permanent: bool = False,
        retry_after: float | None = None,
        flag_connection: bool = False,
        body: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = permanent
        self.retry_after = retry_after
        self.flag_connection = flag_connection
        self.body = body


class WebhookAuthError(Exception):
    """Inbound credentials missing or wrong. Answered with the provider's own status and body."""


class WebhookInputError(Exception):
    """Inbound request malformed. Answered with the provider's own 400 body; nothing is stored."""


def secrets_equal(given: str | bytes | None, expected: str | bytes | None) -> bool:
    """Constant-time comparison; False when either side is missing."""
    if not given or not expected:
        return False
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


# ---------------------------------------------------------------------------------------------------------
# Interfaces
# ---------------------------------------------------------------------------------------------------------


class Provider:
    key: ClassVar[str]
    side: ClassVar[str]
    settings_fields: ClassVar[tuple[Field, ...]] = ()
    secret_fields: ClassVar[tuple[Field, ...]] = ()
    # Inbound URL suffixes shown to admins, relative to /hooks/<key>/<public_id>/ ("" = the base itself).
    inbound_paths: ClassVar[tuple[str, ...]] = ()
    # When the provider appends its own suffixes, admins paste the base URL into its cabinet.
    base_url_is_configured: ClassVar[bool] = False
    # The status and body for bad or missing credentials.
    auth_failure_status: ClassVar[int] = 403
    job_kinds: ClassVar[dict[str, JobKind]] = {}
    # A page of the provider's own in the connection's admin (dotted path of a view taking the request, the
    # connection and the model admin), linked from the change form; "" = none. The sandbox CRM's inbox.
    admin_page: ClassVar[str] = ""
    admin_page_title: ClassVar[str] = ""
    # False for a provider that only receives our webhooks and offers no harmless request to send it
    # (WireCRM): its check_connection() checks the URL, DNS and TLS, and the connection page says so.
    check_sends_request: ClassVar[bool] = True

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # ---- configuration ----
    @classmethod
    def clean_settings(cls, data: dict[str, Any] | None) -> dict[str, Any]:
        return clean_mapping(cls.settings_fields, data, "settings")

    @classmethod
    def clean_secrets(cls, data: dict[str, Any] | None) -> dict[str, Any]:
        return clean_mapping(cls.secret_fields, data, "secrets")

    @classmethod
    def issued_secrets(cls) -> tuple[str, ...]:
        return tuple(f.name for f in cls.secret_fields if f.issued)

    @classmethod
    def new_secret(cls, name: str) -> str:
        """A fresh value for the issued secret `name` ("generate"); providers whose tokens have a format of
        their own (Standard Webhooks' whsec_…) override it."""
        from integrations.crypto import new_token

        return new_token()

    @property
    def settings(self) -> dict[str, Any]:
        merged = {f.name: f.default for f in self.settings_fields}
        merged.update(self.connection.settings or {})
        return merged

    @property
    def secrets(self) -> dict[str, Any]:
        return dict(self.connection.secrets or {})

    def secret_values(self) -> list[str]:
        """Every secret value of this connection: masked in logs and stripped from stored payloads."""
        return [v for v in self.secrets.values() if isinstance(v, str) and v]

    # ---- inbound ----
    def authenticate(self, request: HttpRequest, action: str) -> None:
        """Verify credentials over the raw body (request.body) in constant time; raise WebhookAuthError."""
        raise WebhookAuthError("no inbound endpoint")

    def error_body(self, status: int, message: str) -> Any:
        return {"error": message}

    def parser_classes(self, action: str) -> list[type]:
        from rest_framework.parsers import FormParser, JSONParser, MultiPartParser

        return [JSONParser, FormParser, MultiPartParser]

    def bad_input_response(self, action: str, message: str) -> Response | None:
        """The answer to bad input on `action` when it is not the provider's usual error body (a routing
        question the PBX must always get a 200 for); None answers error_body(400, message)."""
        return None

    def renderer_classes(self, action: str) -> list[type]:
        from rest_framework.renderers import JSONRenderer

        return [JSONRenderer]

    def allows_unauthenticated(self, action: str) -> bool:
        return False

    def handle(self, request: Request, action: str) -> Response:
        """Answer one authenticated inbound request (DRF Request); raise WebhookInputError for bad input."""
        raise WebhookInputError(f"unknown action {action!r}")

    # ---- outbound jobs ----
    def periodic_jobs(self, now: dt.datetime) -> list[JobSpec]:
        """Jobs due on a schedule (beat asks every minute); dedupe keys make asking twice harmless."""
        return []

    def perform(self, job: OutboundJob) -> str:
        """Send one job (payload built now from current state). Return a short response summary for the
        attempt log; raise ProviderError (or integrations.http.OutboundError) on failure."""
        raise ProviderError(f"{self.key} has no job kind {job.kind!r}", permanent=True)

    def check_connection(self) -> CheckResult:
        """A harmless authenticated request that proves the settings and secrets work (run by a worker for the
        admin's "Test connection"). Every provider implements it; one without such a request checks what it
        can (URL, DNS, TLS) and says so in `summary`."""
        raise NotImplementedError(f"{type(self).__name__}.check_connection")

    def perform_batch(self, jobs: list[OutboundJob]) -> dict[int, str | Exception]:
        """Send several jobs of one batchable kind in one request. Map each job id to a summary or to the
        exception that concerns that job alone. Raise for a failure of the whole batch."""
        return {job.id: self.perform(job) for job in jobs}


class PbxProvider(Provider):
    side = PBX
    base_url_is_configured = True

    def is_final(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        """True when the outcome and whether a recording is expected are both known."""
        return any(e.kind == "completed" for e in events)

    def recording_expected(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        """The last word any event had on it (events are in order), or a recording_ready event."""
        said = [e.recording_expected for e in events if e.recording_expected is not None]
        return said[-1] if said else any(e.kind == "recording_ready" for e in events)

    def store_events(self, events: Sequence[NormalisedEvent]) -> None:
        """What a call-event webhook does with what it parsed: store it in the inbox, nothing more (the inbox
        processor applies it). No cache, no broker, no call state here."""
        from calls.inbox import store

        store(self.connection, events, self.secret_values())

    def settle_event(self, event: NormalisedEvent, received_at: dt.datetime) -> NormalisedEvent:
        """Finish an event the webhook stored with `settle` hints (work the request may not do: the cache, the
        directory); called by the inbox processor before the event is applied. Keeps the dedupe key."""
        return event

    def jobs_after_ingest(self, call: Call, new_events: Sequence[NormalisedEvent]) -> list[JobSpec]:
        """Jobs towards the PBX itself that new events call for (call details, an IVR route, a grace timer)."""
        return []

    def originate(self, request: OriginateRequest) -> OriginateResult:
        raise ProviderError(f"{self.key} cannot originate calls", permanent=True)

    def recording_link(self, recording: Recording) -> str:
        """A fresh (temporary, maybe single-use) download link, obtained right before downloading."""
        raise ProviderError(f"{self.key} cannot provide recordings", permanent=True)

    def recording_content(self, recording: Recording) -> tuple[bytes, str] | None:
        """The file itself and its content type, for a PBX whose far end lives inside the portal (the sandbox):
        the SSRF guard rightly refuses links to loopback. None (every real PBX) = download recording_link()."""
        return None

    def list_extensions(self) -> list[DirectoryEntry]:
        raise ProviderError(f"{self.key} has no directory", permanent=True)

    def check_by_directory(self, request_name: str) -> CheckResult:
        """check_connection() for a PBX whose directory request is harmless and authenticated: list it."""
        from integrations.http import OutboundError

        try:
            entries = self.list_extensions()
        except (ProviderError, OutboundError) as exc:
            summary = gettext("%(request)s failed: %(error)s") % {"request": request_name, "error": exc}
            return CheckResult(False, summary, str(getattr(exc, "body", "") or "")[:500])
        shown = ", ".join(f"{e.number} {e.name}".strip() for e in entries[:20])
        summary = gettext("%(request)s answered: %(count)s directory entries")
        return CheckResult(True, summary % {"request": request_name, "count": len(entries)}, shown)

    def dedupe_key(self, event: NormalisedEvent) -> str:
        return event.dedupe_key

    # Whether the admin's "Send test call" may play an invented call through this connection: simulated PBXs
    # only, because on a real PBX connection the tenant's real CRMs would receive it.
    offers_test_call: ClassVar[bool] = False

    def send_test_call(self, scenario: str, options: dict[str, Any]) -> str:
        """Play one simulated call through this connection now (the admin's "Send test call")."""
        raise ProviderError(f"{self.key} does not play test calls", permanent=True)

    def reconcile(self, call: Call) -> ReconcileResult:
        """Ask the PBX about a call that has had no end and no event for RECONCILE_AFTER_SECONDS."""
        raise NotImplementedError(f"{type(self).__name__}.reconcile")

    def simulate(self, scenario: str, options: dict[str, Any]) -> list[SimulatedRequest]:
        """The provider's own signed inbound requests that play one simulated call (`simulate_call`)."""
        raise NotImplementedError(f"{type(self).__name__}.simulate")


class CrmProvider(Provider):
    side = CRM

    def jobs_for(self, call: Call, notices: Sequence[Notice]) -> list[JobSpec]:
        """Map the pipeline's notices about an external call to this CRM's outbound jobs."""
        return []

    def lookup(self, query: RoutingQuery, timeout: float) -> RoutingAnswer | None:
        """Ask the CRM whose caller this is; None = no answer (never an error for an unknown caller)."""
        return None

    def answers_routing(self, query: RoutingQuery) -> bool:
        return True

    def asks_every_call(self, query: RoutingQuery) -> bool:
        """Whether the routing question is also a message the CRM must get for this call (WireCRM's
        NOTIFY_START): then it is asked even when an answer for the caller is cached, and routing waits for it
        until the deadline rather than giving up on it once a higher-priority CRM answered."""
        return False

    # Admin actions the provider offers on its connections: name → (description, dotted path of a function
    # taking the connection and returning a one-line report for the admin message).
    admin_operations: ClassVar[dict[str, tuple[Any, str]]] = {}

    # Content types this CRM's player accepts for recording links ("" = any); a simulated PBX that can produce
    # several formats picks one every active CRM of the tenant plays.
    playable_types: ClassVar[tuple[str, ...]] = ()

    def accepts_playback_client_id(self, client_id: str) -> bool:
        """Whether a recording link fetched with ?clientId=… is this CRM's (RetailCRM plays them that way)."""
        return False

    def jobs_for_sync(self) -> list[JobSpec]:
        """Jobs that a configuration change (mappings, external phones) calls for."""
        return []


def compact_json(data: Any) -> bytes:
    """ASCII-only compact JSON: the exact bytes a provider that signs JSON bodies signs, under any charset."""
    import json

    return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class CompactJSONRenderer(BaseRenderer):
    """Renders exactly what `compact_json` signs, so an answer can carry a signature over its body."""

    media_type = "application/json"
    format = "json"
    charset = None

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        return b"" if data is None else compact_json(data)


def public_base_url() -> str:
    return django_settings.PUBLIC_BASE_URL.rstrip("/")


# ---------------------------------------------------------------------------------------------------------
# Helpers shared by CRM adapters (form-speaking CRMs: Planfix, WireCRM)
# ---------------------------------------------------------------------------------------------------------


def extension_from(value: Any) -> str:
    """The extension a CRM names in a click-to-call: '101', ' 101 ', '101@pbx.example', 'sip:101@pbx.example'
    → '101'. '' when what remains is not an extension (2 to 6 digits): never parsed as a phone number."""
    from integrations.phones import is_extension

    text = str(value or "").strip()
    if text.lower().startswith(("sip:", "sips:")):
        text = text.split(":", 1)[1]
    text = text.split("@", 1)[0].strip()
    return text if is_extension(text) else ""


def form_data(request: Request) -> Any:
    """The parsed form of an inbound request (a QueryDict). A body the provider's parsers refuse (wrong
    content type, broken multipart) is the provider's own 400, not a server error."""
    from rest_framework.exceptions import ParseError, UnsupportedMediaType

    try:
        return request.data
    except (ParseError, UnsupportedMediaType) as exc:
        raise WebhookInputError("Invalid parameters") from exc


def post_form(
    url: str,
    fields: dict[str, str],
    *,
    secrets: Iterable[str],
    multipart: bool = False,
    timeout: float | tuple[float, float] | None = None,
) -> Any:
    """POST flat form fields through the one HTTP client: application/x-www-form-urlencoded, or, with
    `multipart`, multipart/form-data parts without file names (what a PHP receiver reads as $_POST).
    Returns the 2xx response; raises integrations.http.OutboundError otherwise."""
    from integrations import http

    options: dict[str, Any] = {"secrets": secrets}
    if timeout is not None:
        options["timeout"] = timeout
    if multipart:
        # (None, value) makes requests write a plain form part: no filename, no per-part content type.
        return http.request("POST", url, files={k: (None, str(v)) for k, v in fields.items()}, **options)
    return http.request("POST", url, data=fields, **options)


def local_timestamp(moment: dt.datetime | None, tz: dt.tzinfo) -> str:
    """'YYYY-MM-DD HH:MM:SS' in the tenant's time zone (CRMs that take a wall-clock time); '' when unknown."""
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def routing_answer_from_json(response: Any, name_key: str, extension_key: str) -> RoutingAnswer | None:
    """A CRM's JSON routing answer: the caller's name under `name_key`, the responsible extension under
    `extension_key` (a JSON number or a string). Anything that is not an extension is dropped with a log line;
    an empty, non-JSON or nameless answer is no answer."""
    import logging

    from integrations.phones import is_extension

    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    name = data.get(name_key)
    name = name.strip() if isinstance(name, str) else ""
    raw = data.get(extension_key)
    extension = str(raw).strip() if isinstance(raw, int | str) and not isinstance(raw, bool) else ""
    if extension and not is_extension(extension):
        logging.getLogger("callbridge.routing").warning(
            "routing: %s %r is not an extension; ignored", extension_key, extension[:20]
        )
        extension = ""
    if not (name or extension):
        return None
    return RoutingAnswer(extension=extension, display_name=name)
