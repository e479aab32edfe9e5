"""RetailCRM's API v5 client: the `X-API-KEY` header, form-urlencoded POSTs whose nested objects travel as one
JSON string field, the `success`/`errorMsg`/`errors` envelope read into one verdict (permanent or transient,
the admin told or not), and the shared rate limiter that keeps every worker process of one key under
RetailCRM's 10 requests/s (40 under /telephony/).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from django.core.cache import cache

from integrations import http
from integrations.providers.base import ProviderError

if TYPE_CHECKING:
    pass


API = "/api/v5"
UPLOAD_BATCH = 50  # seed 001: "up to 50 calls per request"
# Upload jobs the relay claims for one task, sent as requests of UPLOAD_BATCH: a task's own cost (loading the
# connection and its lookups, recording, the task itself) is shared by four requests instead of one (measured in
# docs/performance.md, RetailCRM backlog through the pipeline).
UPLOAD_CLAIM = 4 * UPLOAD_BATCH
USERS_PAGE_SIZE = 100
# (connect, read) seconds. A pop-up that arrives after the call is useless, so events get a short read timeout;
# a 50-call upload may take the CRM a while.
EVENT_TIMEOUT = (3.05, 5.0)
UPLOAD_TIMEOUT = (3.05, 30.0)
DEFAULT_TIMEOUT = (3.05, 15.0)
GENERAL_RPS = 10
TELEPHONY_RPS = 40
RATE_WAIT_SECONDS = 1.0
RATE_RETRY_AFTER = 1.0  # RetailCRM's own clients wait at least a second after a 503
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


def _user_id(value: str) -> int | str:
    """RetailCRM user ids are integers; a mapping typed by hand may hold anything, which then goes as is."""
    value = (value or "").strip()
    return int(value) if value.isdigit() else value


def _person_name(person: Any) -> str:
    if not isinstance(person, dict):
        return ""
    parts = [str(person.get(k) or "").strip() for k in ("firstName", "lastName")]
    name = " ".join(p for p in parts if p)
    return name or str(person.get("nickName") or person.get("name") or "").strip()
