"""RetailCRM (Simla.com) telephony integration module: the portal plays the PBX.

What goes where (seed 001, digest protocols/crm.md §2):

* portal → RetailCRM, through :class:`RetailCrmClient` (API v5, ``X-API-KEY`` header, form-urlencoded POSTs whose
  nested objects travel as one JSON string field, the ``success``/``errorMsg``/``errors`` envelope):
  module registration and read-back (``integration-modules``), users, the responsible manager for routing,
  call events (pop-up cards) and the call history upload (≤ 50 calls a request);
* RetailCRM → portal, through HookView: ``make-call`` (click-to-call) and ``user-status``, both plain GETs
  authenticated only by the ``clientId`` we registered.

RetailCRM limits every API key to 10 requests/s, and to 40 requests/s under ``/telephony/``, answering 503 above
that; :class:`RateLimiter` keeps all worker processes of one key under those numbers through the shared cache.

The admin calls the module-level services :func:`register_module`, :func:`read_module_back`,
:func:`propose_mappings` and :func:`request_sync`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from rest_framework.response import Response

from integrations import http
from integrations.models import (
    CrmConnection,
    Extension,
    ExtensionMapping,
    ExternalPhone,
    ExternalPhoneSiteCode,
)
from integrations.phones import InvalidPhone, to_e164
from integrations.providers.base import (
    FINAL,
    POPUP,
    CrmProvider,
    Field,
    JobKind,
    JobSpec,
    Notice,
    ProviderError,
    RoutingAnswer,
    RoutingQuery,
    WebhookAuthError,
    WebhookInputError,
    get_provider,
    public_base_url,
    secrets_equal,
)

if TYPE_CHECKING:
    from django.http import HttpRequest
    from rest_framework.request import Request

    from calls.models import Call, OutboundJob, Recording

logger = logging.getLogger("callbridge.retailcrm")

API = "/api/v5"
MODULE_NAME = "Callbridge"

EVENT = "retailcrm.event"
HANGUP = "retailcrm.hangup"
UPLOAD = "retailcrm.upload"
SYNC = "retailcrm.sync"

UPLOAD_BATCH = 50  # seed 001: "up to 50 calls per request"
SYNC_DEBOUNCE_SECONDS = 30
USERS_PAGE_SIZE = 100
USERS_MAX_PAGES = 50

# (connect, read) seconds. A pop-up that arrives after the call is useless, so events get a short read timeout;
# a 50-call upload may take the CRM a while.
EVENT_TIMEOUT = (3.05, 5.0)
UPLOAD_TIMEOUT = (3.05, 30.0)
DEFAULT_TIMEOUT = (3.05, 15.0)

GENERAL_RPS = 10
TELEPHONY_RPS = 40
RATE_WAIT_SECONDS = 1.0
RATE_RETRY_AFTER = 1.0  # RetailCRM's own clients wait at least a second after a 503

USER_STATUSES = ("free", "busy", "dinner", "break")

# calls[].result and the event's hangupStatus are two different enums (digest §2.4, §4): note "no answered".
UPLOAD_RESULT = {
    "answered": "answered",
    "missed": "no answer",
    "cancelled": "no answer",
    "busy": "busy",
    "no_answer": "no answer",
    "not_available": "failed",
    "not_allowed": "not allowed",
    "failed": "failed",
    "unknown": "unknown",
}
HANGUP_STATUS = {
    "answered": "answered",
    "missed": "no answered",
    "cancelled": "cancel",
    "busy": "busy",
    "no_answer": "no answered",
    "not_available": "failed",
    "not_allowed": "failed",
    "failed": "failed",
    "unknown": "failed",
}

# Click-to-call outcome → the HTTP status RetailCRM gets. Anything but 200 shows "call failed" to the user.
ORIGINATE_STATUS = {
    "bad_number": 400,
    "unknown_extension": 404,
    "no_pbx": 409,
    "pbx_refused": 502,
    "pbx_unreachable": 504,
}

# errorMsg texts the official clients single out (digest §2.1). These mean the connection itself is wrong: the
# admin has to act, retrying will not help.
CONNECTION_ERRORS = (
    '"apiKey" is missing',
    'Wrong "apiKey" value',
    "Access denied",
    "Account does not exist",
    "Telephony not enabled",
)
VALIDATION_ERRORS = ("Errors in the entity format", "Validation error", "is missing", "Parameter '")


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


class RetailCrmError(ProviderError):
    """RetailCRM refused a request. `error_msg` and `errors` are the envelope's fields (errors: a map of field
    → message or a list of messages); `validation` marks a request the CRM found malformed."""

    def __init__(
        self,
        message: str,
        *,
        error_msg: str = "",
        errors: dict[str, Any] | list[Any] | None = None,
        validation: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.error_msg = error_msg
        self.errors = errors if errors is not None else {}
        self.validation = validation


class RateLimited(RetailCrmError):
    """Our own limiter found the key's budget spent for longer than we are willing to wait."""


def _envelope(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        # The HTTP client truncates error bodies; the message usually survives at the start.
        match = re.search(r'"errorMsg"\s*:\s*("(?:[^"\\]|\\.)*")', text or "")
        return {"errorMsg": json.loads(match.group(1))} if match else {}
    return data if isinstance(data, dict) else {}


def _errors_text(errors: Any) -> str:
    if isinstance(errors, dict):
        return "; ".join(f"{k}: {v}" for k, v in errors.items())
    if isinstance(errors, list):
        return "; ".join(str(e) for e in errors)
    return ""


def _classify(
    status: int | None,
    envelope: dict[str, Any],
    what: str,
    *,
    html: bool = False,
    retry_after: float | None = None,
) -> RetailCrmError:
    """One verdict for a refused request: permanent or transient, and whether the admin must be told."""
    error_msg = str(envelope.get("errorMsg") or "")
    errors = envelope.get("errors")
    errors = errors if isinstance(errors, dict | list) else None
    shown = f"HTTP {status}" if status else "success: false"
    detail = "; ".join(p for p in (error_msg, _errors_text(errors)[:800]) if p)
    message = f"RetailCRM {what}: {shown}" + (f": {detail}" if detail else "")
    common: dict[str, Any] = {"status": status, "error_msg": error_msg, "errors": errors}
    if html:
        return RetailCrmError(
            f"RetailCRM {what}: {shown}: the account URL answers with an HTML page (Account does not exist?)",
            permanent=True,
            flag_connection=True,
            **common,
        )
    if any(text in error_msg for text in CONNECTION_ERRORS) or status in (401, 403):
        return RetailCrmError(message, permanent=True, flag_connection=True, **common)
    if status in (429, 503):
        return RetailCrmError(
            message + " (rate limit)",
            permanent=False,
            retry_after=max(retry_after or 0.0, RATE_RETRY_AFTER),
            **common,
        )
    if status is not None and (status >= 500 or status == 408):
        return RetailCrmError(message, permanent=False, retry_after=retry_after, **common)
    if status == 404:
        return RetailCrmError(message, permanent=True, **common)
    validation = any(text in error_msg for text in VALIDATION_ERRORS) or status in (400, 422) or bool(errors)
    return RetailCrmError(message, permanent=True, validation=validation, **common)


# ---------------------------------------------------------------------------------------------------------
# Rate limiter
# ---------------------------------------------------------------------------------------------------------


class RateLimiter:
    """At most `limit` requests in any `window` seconds for one API key, counted by every process together.

    The shared cache holds `limit` seats. A request takes a free seat before it is sent and keeps it until
    `window` seconds after its response arrived, so the CRM, whatever it measures (arrival or answer), never sees
    more than `limit` requests inside one window. A full house waits up to `max_wait` seconds for a seat and then
    raises :class:`RateLimited`, a transient error with `retry_after`, so the outbox reschedules instead of a
    worker sleeping.

    The release time lives in the seat's value, not in the cache's expiry: the database cache stores expiry in
    whole seconds, which would free a seat up to a second early. Taking a released seat needs a compare-and-swap
    the cache API lacks, so it is an atomic `add` of a claim key naming that release (each release time is
    unique), then the seat is overwritten as busy.
    """

    CLAIM_SECONDS = 2.0  # outlives any reader that saw the release before the winner overwrote the seat
    GRACE_SECONDS = 5.0  # a released seat stays readable this long after its release time

    def __init__(
        self,
        identity: str,
        bucket: str,
        limit: int,
        *,
        window: float = 1.0,
        max_wait: float = RATE_WAIT_SECONDS,
        hold: float = 120.0,
    ) -> None:
        self.prefix = f"retailcrm:rate:{identity}:{bucket}"
        self.limit = limit
        self.window = window
        self.max_wait = max_wait
        self.hold = hold  # a seat whose holder died frees itself after this long

    def _seats(self) -> list[str]:
        return [f"{self.prefix}:{n}" for n in range(self.limit)]

    def _claim(self, seat: str, released_at: float | None) -> bool:
        busy = ("busy", time.time())
        if released_at is None:  # never used, or long free
            return cache.add(seat, busy, self.hold)
        if not cache.add(f"{seat}:claim:{released_at!r}", 1, self.CLAIM_SECONDS):
            return False
        cache.set(seat, busy, self.hold)
        return True

    def acquire(self) -> str:
        deadline = time.monotonic() + self.max_wait
        seats = self._seats()
        while True:
            now = time.time()
            taken = cache.get_many(seats)
            free: list[tuple[str, float | None]] = []
            upcoming: list[float] = []
            for seat in seats:
                value = taken.get(seat)
                if value is None:
                    free.append((seat, None))
                elif value[0] == "done" and value[1] <= now:
                    free.append((seat, value[1]))
                elif value[0] == "done":
                    upcoming.append(value[1] - now)
            random.shuffle(free)  # workers racing for the same free seat would mostly collide
            for seat, released_at in free:
                if self._claim(seat, released_at):
                    return seat
            pause = min(max(min(upcoming, default=0.02), 0.002), 0.05)
            if time.monotonic() + pause > deadline:
                raise RateLimited(
                    f"RetailCRM rate limit: {self.limit} requests per {self.window:g} s already used",
                    permanent=False,
                    retry_after=RATE_RETRY_AFTER,
                )
            time.sleep(pause)

    def release(self, seat: str) -> None:
        cache.set(seat, ("done", time.time() + self.window), self.window + self.GRACE_SECONDS)

    @contextlib.contextmanager
    def seat(self) -> Iterator[None]:
        seat = self.acquire()
        try:
            yield
        finally:
            self.release(seat)


# ---------------------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------------------


def _json_field(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class RetailCrmClient:
    """API v5 of one RetailCRM account. Every method returns the decoded success envelope or raises
    RetailCrmError (or integrations.http.OutboundError for a timeout or a dropped connection)."""

    def __init__(self, account_url: str, api_key: str, *, limited: bool = True) -> None:
        if not account_url:
            raise ProviderError("RetailCRM account_url is not set", permanent=True, flag_connection=True)
        if not api_key:
            raise ProviderError("RetailCRM api_key is not set", permanent=True, flag_connection=True)
        self.account_url = account_url.rstrip("/")
        self.api_key = api_key
        self.limited = limited
        self._identity = hashlib.sha256(api_key.encode()).hexdigest()[:24]

    def limiter_for(self, path: str) -> RateLimiter:
        if path.startswith(f"{API}/telephony/"):
            return RateLimiter(self._identity, "telephony", TELEPHONY_RPS)
        return RateLimiter(self._identity, "general", GENERAL_RPS)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
        timeout: http.Timeout = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        what = f"{method} {path}"
        data = {k: v if isinstance(v, str) else _json_field(v) for k, v in fields.items()} if fields else None
        seat = self.limiter_for(path).seat() if self.limited else contextlib.nullcontext()
        with seat:
            try:
                response = http.request(
                    method,
                    self.account_url + path,
                    params=params,
                    data=data,
                    headers={"X-API-KEY": self.api_key},
                    timeout=timeout,
                    secrets=[self.api_key],
                )
            except http.OutboundError as exc:
                raise self._refusal(exc, what) from None
        text = response.text
        if text.lstrip().startswith("<"):
            raise _classify(response.status_code, {}, what, html=True)
        envelope = _envelope(text)
        if not envelope:
            raise RetailCrmError(f"RetailCRM {what}: not a JSON answer", status=response.status_code)
        if envelope.get("success") is False:
            raise _classify(None, envelope, what)
        return envelope

    @staticmethod
    def _refusal(exc: http.OutboundError, what: str) -> Exception:
        if exc.kind == "status":
            body = exc.body or ""
            # A 405 with an HTML page is what a non-existent account answers to a POST (digest §2.1).
            return _classify(
                exc.status,
                _envelope(body),
                what,
                html=body.lstrip().startswith("<"),
                retry_after=exc.retry_after,
            )
        if exc.permanent and exc.kind in {"refused", "invalid_url", "tls", "redirect"}:
            # The account URL is wrong or forbidden: only the admin can fix it.
            return RetailCrmError(f"RetailCRM {what}: {exc}", permanent=True, flag_connection=True)
        return exc

    # ---- named operations ----
    def edit_module(self, code: str, module: dict[str, Any]) -> dict[str, Any]:
        return self.request(
            "POST",
            f"{API}/integration-modules/{quote(code, safe='')}/edit",
            fields={"integrationModule": module},
        )

    def get_module(self, code: str) -> dict[str, Any]:
        return self.request("GET", f"{API}/integration-modules/{quote(code, safe='')}")

    def users(self, page: int) -> dict[str, Any]:
        return self.request("GET", f"{API}/users", params={"limit": USERS_PAGE_SIZE, "page": page})

    def responsible_manager(self, phone: str, timeout: float) -> dict[str, Any]:
        # Booleans go as 1/0: the official Python client's True/False is not what the API documents.
        return self.request(
            "GET", f"{API}/telephony/manager", params={"phone": phone, "details": 1}, timeout=timeout
        )

    def call_event(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.request(
            "POST", f"{API}/telephony/call/event", fields={"event": event}, timeout=EVENT_TIMEOUT
        )

    def upload_calls(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        if len(calls) > UPLOAD_BATCH:
            raise ValueError(f"RetailCRM takes at most {UPLOAD_BATCH} calls a request, got {len(calls)}")
        return self.request(
            "POST", f"{API}/telephony/calls/upload", fields={"calls": calls}, timeout=UPLOAD_TIMEOUT
        )


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def _user_id(value: str) -> int | str:
    """RetailCRM user ids are integers; a mapping typed by hand may hold anything, which then goes as is."""
    value = (value or "").strip()
    return int(value) if value.isdigit() else value


def _restore_plus(value: str | None) -> str:
    """RetailCRM puts the number into the URL unencoded (`phone=+7912…`), so the query decoder reads the '+' as a
    space. A leading space before a digit can only have been that '+'."""
    raw = value or ""
    stripped = raw.strip()
    if raw[:1] == " " and stripped[:1].isdigit():
        return "+" + stripped
    return stripped


def _person_name(person: Any) -> str:
    if not isinstance(person, dict):
        return ""
    parts = [str(person.get(k) or "").strip() for k in ("firstName", "lastName")]
    name = " ".join(p for p in parts if p)
    return name or str(person.get("nickName") or person.get("name") or "").strip()


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _bad_indexes(errors: Any) -> dict[int, str]:
    """Which items of a rejected upload the CRM complained about, when its errors name them (`calls[3].date`,
    `calls[3][date]`, `3.date`); {} when they do not."""
    found: dict[int, str] = {}
    pattern = re.compile(r"\[(\d+)\]|^(\d+)(?=[.\[]|$)")
    pairs: list[tuple[str, str]] = []
    if isinstance(errors, dict):
        pairs = [(str(k), f"{k}: {v}") for k, v in errors.items()]
    elif isinstance(errors, list):
        pairs = [(str(e), str(e)) for e in errors]
    for where, message in pairs:
        match = pattern.search(where)
        if not match:
            return {}  # one complaint we cannot place: trust none of them
        index = int(match.group(1) or match.group(2))
        found[index] = f"{found[index]}; {message}" if index in found else message
    return found


# ---------------------------------------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------------------------------------


class RetailCrmProvider(CrmProvider):
    key = "retailcrm"
    settings_fields = (
        Field("account_url", "url"),
        Field("module_code", "str", default="callbridge"),
        Field("upload_strategy", "choice", default="immediate", choices=("immediate", "periodic")),
        Field("upload_interval_minutes", "int", default=10, minimum=1, maximum=1440),
        Field("send_events", "bool", default=True),
    )
    secret_fields = (Field("api_key", "secret"), Field("client_id", "secret", issued=True))
    inbound_paths = ("make-call", "user-status")
    auth_failure_status = 403
    job_kinds = {
        EVENT: POPUP,
        # The end of a call is a completion message: it never expires.
        HANGUP: FINAL,
        # History uploads are independent of the call's other messages, so they do not queue behind them.
        UPLOAD: JobKind(window=FINAL.window, batch_size=UPLOAD_BATCH, ordered=False),
        SYNC: JobKind(window=dt.timedelta(hours=24), ordered=False),
    }

    # ---- clients ----
    def client(self, *, limited: bool = True) -> RetailCrmClient:
        return RetailCrmClient(
            self.settings.get("account_url") or "", self.secrets.get("api_key") or "", limited=limited
        )

    @property
    def module_code(self) -> str:
        return self.settings.get("module_code") or "callbridge"

    # ---- registration ----
    def integration_module(self) -> dict[str, Any]:
        """The integrationModule document, built from the current mappings and site codes."""
        connection = self.connection
        client_id = self.secrets.get("client_id") or ""
        if not client_id:
            raise ProviderError(
                "RetailCRM client_id is not set: generate one before registering",
                permanent=True,
                flag_connection=True,
            )
        urls = connection.inbound_urls()
        send_events = bool(self.settings.get("send_events"))
        mappings = (
            ExtensionMapping.objects.filter(
                crm_connection=connection, extension__tenant_id=connection.tenant_id
            )
            .select_related("extension")
            .order_by("extension__number")
        )
        site_codes = (
            ExternalPhoneSiteCode.objects.filter(
                crm_connection=connection, external_phone__tenant_id=connection.tenant_id
            )
            .exclude(code="")
            .select_related("external_phone")
            .order_by("external_phone__number")
        )
        return {
            "code": self.module_code,
            "integrationCode": self.module_code,
            "active": bool(connection.active),
            "name": MODULE_NAME,
            "clientId": client_id,
            "accountUrl": f"{public_base_url()}/admin/integrations/tenant/{connection.tenant_id}/change/",
            "integrations": {
                "telephony": {
                    "makeCallUrl": urls["make-call"],
                    "changeUserStatusUrl": urls["user-status"],
                    # Users may edit codes and phones in RetailCRM; "read the module back" imports them.
                    "allowEdit": True,
                    "inputEventSupported": send_events,
                    "outputEventSupported": send_events,
                    "hangupEventSupported": send_events,
                    "additionalCodes": [
                        {"userId": _user_id(m.crm_user_id), "code": m.extension.number} for m in mappings
                    ],
                    "externalPhones": [
                        {"siteCode": s.code, "externalPhone": s.external_phone.number} for s in site_codes
                    ],
                }
            },
        }

    def register(self) -> dict[str, list[Any]]:
        answer = self.client().edit_module(self.module_code, self.integration_module())
        info = answer.get("info")
        info = info if isinstance(info, dict) else {}  # an empty info comes as [] (digest §2.2)
        result = {
            "notExistUsersIds": list(info.get("notExistUsersIds") or []),
            "notExistSiteCodes": list(info.get("notExistSiteCodes") or []),
        }
        if result["notExistUsersIds"] or result["notExistSiteCodes"]:
            logger.warning(
                "retailcrm %s: registration reports unknown users/sites %s", self.connection, result
            )
        return result

    admin_operations: ClassVar[dict[str, tuple[str, str]]] = {
        "register": (
            "Register the telephony module now",
            "integrations.providers.retailcrm.register_module_report",
        ),
        "read_back": (
            "Import mappings edited in RetailCRM",
            "integrations.providers.retailcrm.read_module_back_report",
        ),
        "propose": ("Propose mappings by e-mail", "integrations.providers.retailcrm.propose_mappings_report"),
    }

    def jobs_for_sync(self) -> list[JobSpec]:
        """One registration per 30-second bucket, sent 30 s after the first change in it, so a burst of admin edits
        becomes one request that carries all of them (the document is built when the job runs)."""
        now = timezone.now()
        bucket = int(now.timestamp() // SYNC_DEBOUNCE_SECONDS)
        return [
            JobSpec(
                SYNC, f"sync:{bucket}", {}, None, "", due_at=now + dt.timedelta(seconds=SYNC_DEBOUNCE_SECONDS)
            )
        ]

    # ---- notices → jobs ----
    def jobs_for(self, call: Call, notices: Sequence[Notice]) -> list[JobSpec]:
        specs: list[JobSpec] = []
        if self.settings.get("send_events"):
            specs += self._event_specs(call, notices)
        for notice in notices:
            if notice.kind == "completed":
                specs.append(
                    JobSpec(UPLOAD, f"upload:{call.pk}", {}, call, notice.order_key, self._upload_due_at())
                )
        return specs

    def _event_specs(self, call: Call, notices: Sequence[Notice]) -> list[JobSpec]:
        specs: list[JobSpec] = []
        ringing: dict[str, list[str]] = {}
        completed = next((n for n in notices if n.kind == "completed"), None)
        for n in notices:
            if not n.extension:
                continue  # RetailCRM shows a card to extension codes; without one there is nobody to tell
            if n.kind == "ringing":
                ringing.setdefault(n.order_key, []).append(n.extension)
            elif n.kind == "dialing":
                specs.append(
                    JobSpec(
                        EVENT,
                        f"event:{call.pk}:out",
                        {"type": "out", "codes": [n.extension]},
                        call,
                        n.order_key,
                    )
                )
            elif n.kind == "leg_cancelled" and not (completed and completed.extension == n.extension):
                payload = {"type": "hangup", "codes": [n.extension], "leg": "cancelled"}
                specs.append(JobSpec(HANGUP, f"hangup:{call.pk}:{n.extension}", payload, call, n.order_key))
            elif n.kind == "completed":
                payload = {"type": "hangup", "codes": [n.extension], "leg": "completed"}
                specs.append(JobSpec(HANGUP, f"hangup:{call.pk}:{n.extension}", payload, call, n.order_key))
        for order_key, codes in ringing.items():
            codes = list(dict.fromkeys(codes))
            specs.append(
                JobSpec(
                    EVENT, f"event:{call.pk}:in:{order_key}", {"type": "in", "codes": codes}, call, order_key
                )
            )
        return specs

    def _upload_due_at(self) -> dt.datetime | None:
        """Immediate: now. Periodic: the next multiple of the interval, so every call that completed in one interval
        is due at the same instant and the relay claims them together, up to 50 a request."""
        if self.settings.get("upload_strategy") != "periodic":
            return None
        interval = int(self.settings.get("upload_interval_minutes") or 10) * 60
        boundary = (int(timezone.now().timestamp()) // interval + 1) * interval
        return dt.datetime.fromtimestamp(boundary, tz=dt.UTC)

    # ---- sending ----
    def perform(self, job: OutboundJob) -> str:
        if job.kind == UPLOAD:
            result = self.perform_batch([job])[job.pk]
            if isinstance(result, Exception):
                raise result
            return result
        if job.kind in (EVENT, HANGUP):
            return self._send_event(job)
        if job.kind == SYNC:
            result = self.register()
            return f"registered; notExistUsersIds={result['notExistUsersIds']} notExistSiteCodes={result['notExistSiteCodes']}"
        return super().perform(job)

    def _site_codes(self) -> dict[str, str]:
        return dict(
            ExternalPhoneSiteCode.objects.filter(
                crm_connection=self.connection, external_phone__tenant_id=self.connection.tenant_id
            )
            .exclude(code="")
            .values_list("external_phone__number", "code")
        )

    def _user_ids(self) -> dict[str, str]:
        return dict(
            ExtensionMapping.objects.filter(
                crm_connection=self.connection, extension__tenant_id=self.connection.tenant_id
            ).values_list("extension__number", "crm_user_id")
        )

    def event_for(self, job: OutboundJob, site_codes: dict[str, str] | None = None) -> dict[str, Any] | None:
        """The call/event document for one event job, from the call's state now; None when there is nobody to
        show it to."""
        call = job.call
        codes = [c for c in job.payload.get("codes") or [] if c]
        if call is None or not codes:
            return None
        phone = call.client_phone or call.client_phone_raw
        if not phone:
            raise ProviderError("the call has no client phone number", permanent=True)
        event: dict[str, Any] = {
            "phone": phone,
            "type": job.payload["type"],
            "codes": codes,
            "callExternalId": call.provider_call_id,
        }
        if event["type"] == "hangup":
            lost_to_colleague = job.payload.get("leg") == "cancelled" and call.answered_extensions
            event["hangupStatus"] = (
                "cancel" if lost_to_colleague else HANGUP_STATUS.get(call.result, "failed")
            )
        if call.external_phone:
            event["externalPhone"] = call.external_phone
            site = (site_codes if site_codes is not None else self._site_codes()).get(call.external_phone)
            if site:
                event["site"] = site
        return event

    def _send_event(self, job: OutboundJob) -> str:
        event = self.event_for(job)
        if event is None:
            return "skipped: no extension to show the card to"
        answer = self.client().call_event(event)
        unknown = {k: answer[k] for k in ("notExistCodes", "notExistUsers") if answer.get(k)}
        if unknown:
            logger.warning("retailcrm %s: call event for unknown codes/users %s", self.connection, unknown)
            return f"sent; {unknown}"
        return "sent"

    def upload_item(
        self,
        call: Call,
        user_ids: dict[str, str] | None = None,
        site_codes: dict[str, str] | None = None,
        recordings: dict[int, Recording] | None = None,
    ) -> dict[str, Any]:
        """One calls[] element (digest §2.5), from the call's current state. The lookups may be passed in, loaded
        once for a whole batch."""
        user_ids = self._user_ids() if user_ids is None else user_ids
        site_codes = self._site_codes() if site_codes is None else site_codes
        tz = self.connection.tenant.tz
        started = call.started_at or call.ended_at or call.created_at
        extension = call.responsible_extension
        item: dict[str, Any] = {
            "date": timezone.localtime(started, tz).strftime("%Y-%m-%d %H:%M:%S"),
            "type": call.direction,
            "phone": call.client_phone or call.client_phone_raw,
            "result": UPLOAD_RESULT.get(call.result, "unknown"),
            "duration": int(call.talk_seconds or 0),
            "durationWaiting": int(call.wait_seconds or 0),
            "externalId": call.provider_call_id,
        }
        if extension:
            item["code"] = extension
            if user_ids.get(extension):
                item["userId"] = _user_id(user_ids[extension])
        if call.external_phone:
            item["externalPhone"] = call.external_phone
            if site_codes.get(call.external_phone):
                item["site"] = site_codes[call.external_phone]
        recording = None
        if call.recording_expected:
            recording = (
                recordings.get(call.pk) if recordings is not None else getattr(call, "recording", None)
            )
        if recording is not None and recording.state != recording.UNAVAILABLE:
            item["recordUrl"] = recording.public_url
        return item

    def perform_batch(self, jobs: list[OutboundJob]) -> dict[int, str | Exception]:
        """Upload calls, at most 50 a request. Never raises: a failure of one request is the result of the jobs it
        carried, so the requests that went through stay sent."""
        results: dict[int, str | Exception] = {}
        uploads = [job for job in jobs if job.kind == UPLOAD]
        for job in jobs:
            if job.kind != UPLOAD:
                try:
                    results[job.pk] = self.perform(job)
                except Exception as exc:
                    results[job.pk] = exc
        if not uploads:
            return results
        from calls.models import Recording

        user_ids, site_codes = self._user_ids(), self._site_codes()
        recordings = {
            r.call_id: r for r in Recording.objects.filter(call_id__in=[j.call_id for j in uploads])
        }
        items: dict[str, dict[str, Any]] = {}  # externalId → item (a call resent twice goes once)
        carried: dict[str, list[int]] = {}
        for job in uploads:
            call = job.call
            if call is None or not call.is_external or not call.final_for_crm:
                results[job.pk] = "skipped: not an external call final for CRMs"
                continue
            try:
                item = self.upload_item(call, user_ids, site_codes, recordings)
            except Exception as exc:  # a broken call must not hold back the others
                results[job.pk] = ProviderError(f"cannot build the upload: {exc}", permanent=True)
                continue
            items.setdefault(item["externalId"], item)
            carried.setdefault(item["externalId"], []).append(job.pk)
        client = self.client()
        for chunk in _chunks(list(items.values()), UPLOAD_BATCH):
            for external_id, outcome in self._upload(client, chunk).items():
                for pk in carried[external_id]:
                    results[pk] = outcome
        return results

    def _upload(
        self, client: RetailCrmClient, items: list[dict[str, Any]], *, split: bool = True
    ) -> dict[str, str | Exception]:
        """Upload one request's worth; on a validation error, leave out the items the CRM named and send the rest
        again, or, when it named none, send each item alone so only the bad ones fail."""
        ids = [item["externalId"] for item in items]
        try:
            answer = client.upload_calls(items)
        except RetailCrmError as exc:
            if not exc.validation or len(items) == 1 or not split:
                return dict.fromkeys(ids, exc)
            logger.warning(
                "retailcrm %s: upload of %s calls rejected (%s); splitting", self.connection, len(items), exc
            )
            return self._split(client, items, exc)
        except Exception as exc:
            return dict.fromkeys(ids, exc)
        duplicates = {str(d) for d in answer.get("duplicateCalls") or []}
        processed = answer.get("processedCallsCount")
        return {
            external_id: (
                "already in RetailCRM (duplicateCalls)"
                if external_id in duplicates
                else f"uploaded ({processed} in batch)"
            )
            for external_id in ids
        }

    def _split(
        self, client: RetailCrmClient, items: list[dict[str, Any]], exc: RetailCrmError
    ) -> dict[str, str | Exception]:
        results: dict[str, str | Exception] = {}
        bad = {i: m for i, m in _bad_indexes(exc.errors).items() if i < len(items)}
        rest = items
        if bad:
            for index, message in bad.items():
                external_id = items[index]["externalId"]
                results[external_id] = RetailCrmError(
                    f"RetailCRM rejected the call: {message}",
                    permanent=True,
                    validation=True,
                    status=exc.status,
                )
            rest = [item for i, item in enumerate(items) if i not in bad]
            if not rest:
                return results
            again = self._upload(client, rest, split=False)
            still_invalid = [r for r in again.values() if isinstance(r, RetailCrmError) and r.validation]
            if not still_invalid:
                return {**results, **again}
        for position, item in enumerate(rest):
            outcome = self._upload(client, [item], split=False)[item["externalId"]]
            results[item["externalId"]] = outcome
            if isinstance(outcome, Exception) and not (
                isinstance(outcome, RetailCrmError) and outcome.validation
            ):
                # The CRM or the key is the problem, not this call: the rest would fail alike; retry them later.
                for later in rest[position + 1 :]:
                    results[later["externalId"]] = outcome
                break
        return results

    # ---- routing ----
    def answers_routing(self, query: RoutingQuery) -> bool:
        return bool(self.settings.get("account_url") and self.secrets.get("api_key"))

    def lookup(self, query: RoutingQuery, timeout: float) -> RoutingAnswer | None:
        # Runs in a routing thread that must not touch the database, and the default shared cache is the database:
        # so no rate limiter here. A 503 just means no answer this time.
        try:
            answer = self.client(limited=False).responsible_manager(query.caller, timeout)
        except RetailCrmError as exc:
            if exc.status == 404 or exc.error_msg.startswith("Not found"):
                return None
            raise
        manager = answer.get("manager")
        code = str(manager.get("code") or "").strip() if isinstance(manager, dict) else ""
        if not code:
            return None  # no client, or the manager is not free: RetailCRM says nothing (digest §2.6)
        return RoutingAnswer(extension=code, display_name=_person_name(answer.get("customer")))

    # ---- recordings ----
    def accepts_playback_client_id(self, client_id: str) -> bool:
        return secrets_equal(client_id, self.secrets.get("client_id"))

    # ---- inbound ----
    def authenticate(self, request: HttpRequest, action: str) -> None:
        # The clientId in the query string is RetailCRM's only credential (seed 001). Never echo or log it.
        if not secrets_equal(request.GET.get("clientId"), self.secrets.get("client_id")):
            raise WebhookAuthError("Invalid clientId")

    def error_body(self, status: int, message: str) -> Any:
        return {"success": False, "error": message}

    def handle(self, request: Request, action: str) -> Response:
        if action == "make-call":
            return self._make_call(request)
        if action == "user-status":
            return self._user_status(request)
        raise WebhookInputError(f"Unknown action {action!r}")

    def _make_call(self, request: Request) -> Response:
        from calls.services import originate

        params = request.query_params
        code = (params.get("code") or "").strip()
        phone = _restore_plus(params.get("phone"))
        external_phone = _restore_plus(params.get("externalPhone"))
        user_id = (params.get("userId") or "").strip()
        if not code or not phone:
            raise WebhookInputError("code and phone are required")
        outcome = originate(
            self.connection.tenant,
            code,
            phone,
            crm_connection=self.connection,
            external_phone=external_phone,
            crm_user_id=user_id,
            context={"crm": "retailcrm", "userId": user_id},
        )
        if outcome.ok:
            return Response({"success": True, "callId": outcome.correlation_id}, status=200)
        status = ORIGINATE_STATUS.get(outcome.code, 502)
        logger.info(
            "retailcrm %s: make-call by %s to %s failed: %s", self.connection, code, phone, outcome.error
        )
        return Response({"success": False, "error": outcome.error, "code": outcome.code}, status=status)

    def _user_status(self, request: Request) -> Response:
        params = request.query_params
        user_id = (params.get("userId") or "").strip()
        code = (params.get("code") or "").strip()
        status = (params.get("status") or "").strip()
        if not status or not (user_id or code) or len(status) > 30:
            raise WebhookInputError("userId (or code) and status are required")
        if status not in USER_STATUSES:
            logger.info("retailcrm %s: unexpected user status %r stored as is", self.connection, status)
        mine = ExtensionMapping.objects.filter(
            crm_connection=self.connection, extension__tenant_id=self.connection.tenant_id
        )
        now = timezone.now()
        updated = mine.filter(crm_user_id=user_id).update(status=status, status_at=now) if user_id else 0
        if not updated and code:
            updated = mine.filter(extension__number=code).update(status=status, status_at=now)
        if not updated:
            logger.info(
                "retailcrm %s: status for unmapped user %s / code %s ignored", self.connection, user_id, code
            )
        return Response({"success": True, "updated": updated}, status=200)


# ---------------------------------------------------------------------------------------------------------
# Services for the admin
# ---------------------------------------------------------------------------------------------------------


def _adapter(crm_connection: CrmConnection) -> RetailCrmProvider:
    adapter = get_provider(crm_connection)
    if not isinstance(adapter, RetailCrmProvider):
        raise ValueError(f"{crm_connection} is not a RetailCRM connection")
    return adapter


@contextlib.contextmanager
def _flagging(crm_connection: CrmConnection) -> Iterator[None]:
    """Errors only the admin can fix (bad key, wrong account) also land on the connection's last_error."""
    try:
        yield
    except ProviderError as exc:
        if exc.flag_connection:
            crm_connection.flag_error(str(exc))
        raise


def register_module(crm_connection: CrmConnection) -> dict[str, list[Any]]:
    """Register or update the telephony module in RetailCRM now. Returns what RetailCRM did not recognise:
    {"notExistUsersIds": [...], "notExistSiteCodes": [...]}. Raises RetailCrmError/ProviderError."""
    with _flagging(crm_connection):
        return _adapter(crm_connection).register()


def read_module_back(crm_connection: CrmConnection) -> dict[str, Any]:
    """Import the extension codes and external phones users edited in RetailCRM. Mappings missing there are kept.
    Returns {"created": n, "updated": n, "unchanged": n, "skipped": ["reason", ...]}."""
    adapter = _adapter(crm_connection)
    with _flagging(crm_connection):
        answer = adapter.client().get_module(adapter.module_code)
    module = answer.get("integrationModule") or {}
    telephony = ((module.get("integrations") or {}) if isinstance(module, dict) else {}).get(
        "telephony"
    ) or {}
    tenant = crm_connection.tenant
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    skipped: list[str] = []

    def count(created: bool, changed: bool) -> None:
        counts["created" if created else "updated" if changed else "unchanged"] += 1

    with transaction.atomic():
        extensions = {e.number: e for e in Extension.objects.filter(tenant=tenant)}
        for entry in telephony.get("additionalCodes") or []:
            code, user_id = str(entry.get("code") or "").strip(), str(entry.get("userId") or "").strip()
            extension = extensions.get(code)
            if extension is None or not user_id:
                skipped.append(f"code {code or '?'} (user {user_id or '?'}): no such extension")
                continue
            mapping, created = ExtensionMapping.objects.get_or_create(
                extension=extension, crm_connection=crm_connection, defaults={"crm_user_id": user_id}
            )
            changed = not created and mapping.crm_user_id != user_id
            if changed:
                ExtensionMapping.objects.filter(pk=mapping.pk).update(crm_user_id=user_id)
            count(created, changed)
        phones = {p.number: p for p in ExternalPhone.objects.filter(tenant=tenant)}
        for entry in telephony.get("externalPhones") or []:
            raw, site = str(entry.get("externalPhone") or ""), str(entry.get("siteCode") or "").strip()
            try:
                phone = phones.get(to_e164(raw, tenant.region))
            except InvalidPhone:
                phone = None
            if phone is None or not site:
                skipped.append(f"external phone {raw or '?'} (site {site or '?'}): no such external phone")
                continue
            site_code, created = ExternalPhoneSiteCode.objects.get_or_create(
                external_phone=phone, crm_connection=crm_connection, defaults={"code": site}
            )
            changed = not created and site_code.code != site
            if changed:
                ExternalPhoneSiteCode.objects.filter(pk=site_code.pk).update(code=site)
            count(created, changed)
    return {**counts, "skipped": skipped}


def propose_mappings(crm_connection: CrmConnection) -> list[dict[str, Any]]:
    """Match RetailCRM users to Extensions by e-mail and create the missing mappings. Never overwrites one: an
    extension or a user already mapped otherwise is reported as a conflict. Each entry: extension, user_id,
    email, name, action (created | exists | conflict)."""
    adapter = _adapter(crm_connection)
    users: list[dict[str, Any]] = []
    with _flagging(crm_connection):
        client = adapter.client()
        for page in range(1, USERS_MAX_PAGES + 1):
            answer = client.users(page)
            users += [u for u in answer.get("users") or [] if isinstance(u, dict)]
            pages = (answer.get("pagination") or {}).get("totalPageCount") or 1
            if page >= int(pages):
                break
    by_email = {
        e.email.strip().lower(): e
        for e in Extension.objects.filter(tenant=crm_connection.tenant).exclude(email="")
    }
    proposals: list[dict[str, Any]] = []
    with transaction.atomic():
        mappings = {m.extension_id: m for m in ExtensionMapping.objects.filter(crm_connection=crm_connection)}
        mapped_users = {m.crm_user_id for m in mappings.values()}
        for user in users:
            email = str(user.get("email") or "").strip().lower()
            extension = by_email.get(email)
            if extension is None or user.get("active") is False or user.get("id") in (None, ""):
                continue
            user_id = str(user["id"])
            existing = mappings.get(extension.pk)
            if existing is not None:
                action = "exists" if existing.crm_user_id == user_id else "conflict"
            elif user_id in mapped_users:
                action = "conflict"
            else:
                mappings[extension.pk] = ExtensionMapping.objects.create(
                    extension=extension, crm_connection=crm_connection, crm_user_id=user_id
                )
                mapped_users.add(user_id)
                action = "created"
            proposals.append(
                {
                    "extension": extension.number,
                    "user_id": user_id,
                    "email": email,
                    "name": _person_name(user),
                    "action": action,
                }
            )
    if any(p["action"] == "created" for p in proposals):
        request_sync(crm_connection)
    return proposals


def request_sync(crm_connection: CrmConnection) -> int:
    """Queue a debounced re-registration (mappings or external phones changed). Returns how many jobs were new:
    calling it again within the same 30-second bucket adds nothing."""
    from calls import outbox

    if crm_connection.provider != RetailCrmProvider.key:
        return 0
    return outbox.create_jobs(crm_connection, _adapter(crm_connection).jobs_for_sync())


# ---- admin operations (one-line reports for the admin's messages) ----------------------------------------


def register_module_report(crm_connection: CrmConnection) -> str:
    result = register_module(crm_connection)
    unknown = (
        [f"unknown user ids: {', '.join(map(str, result['notExistUsersIds']))}"]
        if result.get("notExistUsersIds")
        else []
    )
    if result.get("notExistSiteCodes"):
        unknown.append(f"unknown site codes: {', '.join(map(str, result['notExistSiteCodes']))}")
    return "telephony module registered" + (f" ({'; '.join(unknown)})" if unknown else "")


def read_module_back_report(crm_connection: CrmConnection) -> str:
    result = read_module_back(crm_connection)
    text = f"{result['created']} created, {result['updated']} updated, {result['unchanged']} unchanged"
    return text + (f"; skipped: {'; '.join(result['skipped'][:10])}" if result["skipped"] else "")


def propose_mappings_report(crm_connection: CrmConnection) -> str:
    proposals = propose_mappings(crm_connection)
    by_action: dict[str, list[str]] = {}
    for proposal in proposals:
        by_action.setdefault(proposal["action"], []).append(f"{proposal['extension']}→{proposal['user_id']}")
    if not by_action:
        return "no RetailCRM user's e-mail matches an extension"
    return "; ".join(f"{action}: {', '.join(items)}" for action, items in sorted(by_action.items()))
