"""What the Rostelecom PBX sends us: signed `call_events` (new / connected / disconnected / end) turned into
normalised events, and the synchronous `get_number_info` routing question, answered within its budget.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from integrations.providers.base import (
    CompactJSONRenderer,
    WebhookAuthError,
    WebhookInputError,
    inbound_action,
    secrets_equal,
)
from integrations.providers.rostelecom.wire import (
    RANK_UNKNOWN,
    RANKS,
    Party,
    dump_json,
    is_true,
    order_key,
    parse_party,
    parse_timestamp,
    pin_of,
    signature,
)

if TYPE_CHECKING:
    from django.http import HttpRequest
    from rest_framework.request import Request

    from calls.events import NormalisedEvent

logger = logging.getLogger("callbridge.rostelecom")


AUTH_FAILURE_MESSAGE = "Invalid signature"
MAX_SESSION_ID = 200  # Call.provider_call_id
DIRECTIONS = {"incoming": "in", "outbound": "out", "internal": "internal"}
KINDS = {"new": "ringing", "connected": "answered", "disconnected": "leg_ended", "end": "completed"}


class RostelecomWebhooks:
    """Inbound half of RostelecomProvider: authentication, the two methods, event parsing."""

    def authenticate(self, request: HttpRequest, action: str) -> None:
        """X-Client-ID must be this connection's and X-Client-Sign must match the raw body. Every failure gets
        the same answer; the log line says which check failed, never a value."""
        client_id, sign_key = self._credentials()
        where = f"rostelecom {self.connection.public_id}/{action}"
        if not client_id or not sign_key:
            logger.warning("%s: the connection has no client_id or sign_key", where)
            raise WebhookAuthError(AUTH_FAILURE_MESSAGE)
        if not secrets_equal((request.headers.get("X-Client-ID") or "").strip(), client_id):
            logger.warning("%s: X-Client-ID missing or not this connection's", where)
            raise WebhookAuthError(AUTH_FAILURE_MESSAGE)
        given = (request.headers.get("X-Client-Sign") or "").strip().lower()
        if not secrets_equal(given, signature(client_id, request.body, sign_key)):
            logger.warning("%s: X-Client-Sign missing or wrong", where)
            raise WebhookAuthError(AUTH_FAILURE_MESSAGE)

    def error_body(self, status: int, message: str) -> Any:
        return {"result": 1, "resultMessage": message}

    def bad_input_response(self, action: str, message: str) -> Response | None:
        """get_number_info is always answered 200 with result 0 and no PIN: the PBX then routes by its own
        rules instead of waiting out its timeout or failing the call."""
        if action == "get_number_info":
            return self.answer({"result": 0, "resultMessage": "Caller unknown"})
        return None

    def parser_classes(self, action: str) -> list[type]:
        return [JSONParser]  # the body is read raw (request.body); this only keeps DRF from refusing it

    def renderer_classes(self, action: str) -> list[type]:
        return [CompactJSONRenderer]  # exactly what dump_json signs

    def handle(self, request: Request, action: str) -> Response:
        handlers = {"call_events": self.handle_call_events, "get_number_info": self.handle_get_number_info}
        action = inbound_action(action)  # `…//call_events` and `…/call_events/` are `call_events`
        if action not in handlers:
            raise WebhookInputError(f"Unknown method {action!r}")
        return handlers[action](request)

    def answer(self, data: dict[str, Any], status: int = 200) -> Response:
        """Our answers are signed too: the PBX is not documented to check them, and it costs nothing."""
        return Response(data, status=status, headers=self.signed_headers(dump_json(data)))

    @staticmethod
    def read_body(request: Request) -> dict[str, Any]:
        raw = request._request.body
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1251", errors="replace")  # one public sample posts cp1251
        try:
            body = json.loads(text)
        except ValueError:
            raise WebhookInputError("Invalid JSON") from None
        if not isinstance(body, dict):
            raise WebhookInputError("Invalid JSON: an object is expected")
        return body

    def handle_call_events(self, request: Request) -> Response:
        """Parse, store in the inbox, answer: the PINs' directory lookups wait for the processor (settle)."""
        body = self.read_body(request)
        self.store_events([self.to_event(body, directory=False)])
        return self.answer({"result": 0, "resultMessage": "ok"})

    def settle_event(self, event: NormalisedEvent, received_at: dt.datetime) -> NormalisedEvent:
        """The event parsed again with the directory: group PINs dropped, SIP logins turned into PINs."""
        if not event.settle.get("directory"):
            return event
        return replace(self.to_event(event.raw), dedupe_key=event.dedupe_key)

    def handle_get_number_info(self, request: Request) -> Response:
        """Whose caller is this: answered within routing_budget_ms, always `result: 0`; without a PIN the PBX
        routes by its own rules. Accepts the guide's body (domain, from_number, request_number) and the seed's
        call_events-shaped one (session_id, timestamp, type, state, …)."""
        started = time.monotonic()
        unknown = {"result": 0, "resultMessage": "Caller unknown"}
        try:
            body = self.read_body(request)
        except WebhookInputError as exc:
            # A question we cannot read still gets an answer in time and in shape: no PIN, so the PBX routes
            # the call by its own rules instead of waiting out its timeout.
            logger.warning("rostelecom %s: get_number_info unreadable (%s)", self.connection.public_id, exc)
            return self.answer(unknown)
        caller = parse_party(body.get("from_number"), self.region).phone
        if not caller:
            return self.answer(unknown)
        did = parse_party(body.get("request_number"), self.region).phone
        session_id = str(body.get("session_id") or "").strip()
        # The budget covers the whole answer: what reading the request already took is not given to the CRMs.
        budget_ms = int(self.settings.get("routing_budget_ms") or 800)
        remaining_ms = max(1, budget_ms - int((time.monotonic() - started) * 1000))
        try:
            decision = self.resolve_caller(caller, did, session_id, remaining_ms)
        except Exception:  # never a 5xx: without our answer the PBX waits out its timeout
            logger.exception("rostelecom %s: routing failed", self.connection.public_id)
            return self.answer(unknown)
        known = bool(decision.extension or decision.display_name)
        data: dict[str, Any] = {"result": 0, "resultMessage": "Caller found" if known else "Caller unknown"}
        if decision.display_name:
            data["displayName"] = decision.display_name
        if decision.extension:
            data["PIN"] = decision.extension
        response = self.answer(data)
        # The decision and the cache are written once the answer is on its way (Django closes the response
        # after sending it), so those writes never add to the PBX's wait.
        response._resource_closers.append(lambda: self._record_decision(decision))
        return response

    def _record_decision(self, decision: Any) -> None:
        from calls.routing import save_decision

        try:
            save_decision(decision)
        except Exception:  # the PBX has its answer; a lost ledger row must not surface anywhere else
            logger.exception("rostelecom %s: routing decision not recorded", self.connection.public_id)

    def resolve_caller(self, caller: str, did: str, session_id: str, deadline_ms: int | None = None) -> Any:
        """The routing decision, unsaved (handle_get_number_info records it after answering)."""
        from calls.models import Call
        from calls.routing import resolve

        call = None
        if session_id:
            call = Call.objects.filter(pbx_connection=self.connection, provider_call_id=session_id).first()
        return resolve(
            self.connection.tenant,
            caller,
            did,
            call=call,
            provider_call_id=session_id,
            deadline_ms=deadline_ms or int(self.settings.get("routing_budget_ms") or 800),
            pbx_connection=self.connection,
            defer_writes=True,
        )

    def group_pins(self) -> set[str]:
        from integrations.models import Extension

        return set(
            Extension.objects.filter(tenant_id=self.connection.tenant_id, kind=Extension.GROUP).values_list(
                "number", flat=True
            )
        )

    def pin_of_login(self, party: Party) -> str:
        """The PIN of the employee an event names by SIP login or SIP URI (`ivan@domain`), from the logins
        imported from users_info (Extension.sip_login); "" when no extension has that login."""
        from integrations.models import Extension

        if not party.login:
            return ""
        logins = {party.login.lower(), str(party.raw or "").strip().lower().removeprefix("sip:")}
        for number, login in (
            Extension.objects.filter(tenant_id=self.connection.tenant_id, kind=Extension.USER)
            .exclude(sip_login="")
            .values_list("number", "sip_login")
        ):
            if login.strip().lower() in logins:
                return number
        return ""

    def to_event(self, body: dict[str, Any], directory: bool = True) -> NormalisedEvent:
        """The normalised event of one call_events body. directory=False (the webhook): no Extension lookups;
        an event that would need them is marked for settle_event() instead."""
        from calls.events import NormalisedEvent

        session_id = str(body.get("session_id") or "").strip()
        if not session_id:
            raise WebhookInputError("Invalid JSON: session_id is required")
        if len(session_id) > MAX_SESSION_ID:
            raise WebhookInputError(f"Invalid JSON: session_id longer than {MAX_SESSION_ID} characters")
        state = str(body.get("state") or "").strip().lower()
        direction = DIRECTIONS.get(str(body.get("type") or "").strip().lower(), "")
        stamp = str(body.get("timestamp") or "").strip()
        moment = parse_timestamp(stamp, self.zone)
        if moment is None:
            logger.warning("rostelecom %s: event without a usable timestamp", self.connection.public_id)
            moment = timezone.now()

        caller = parse_party(body.get("from_number"), self.region)
        callee = parse_party(body.get("request_number"), self.region)
        caller_pin = pin_of(body.get("from_pin")) or caller.extension
        callee_pin = pin_of(body.get("request_pin")) or callee.extension
        settle: dict[str, Any] = {}
        if not directory:
            if caller_pin or callee_pin or caller.login or callee.login:
                settle = {"directory": True}
        else:
            caller_pin = caller_pin or self.pin_of_login(caller)
            callee_pin = callee_pin or self.pin_of_login(callee)
        if directory and (caller_pin or callee_pin):
            # A group's PIN names no one who rings or talks (its members do): no card, no answering employee.
            groups = self.group_pins()
            caller_pin = "" if caller_pin in groups else caller_pin
            callee_pin = "" if callee_pin in groups else callee_pin
        kind = KINDS.get(state, "unknown")

        client, external = Party(""), ""
        if direction == "in":
            client, extension = caller, callee_pin
            if state == "new":  # later states carry the answering user there, not the line
                external = callee.phone
        elif direction == "out":
            client, extension = callee, caller_pin
        elif direction == "internal":
            extension = callee_pin
        else:
            extension = callee_pin or caller_pin
        if direction == "internal" and kind != "ringing":
            extensions = tuple(p for p in dict.fromkeys((caller_pin, callee_pin)) if p)
        else:
            extensions = (extension,) if extension else ()

        recording_expected = None
        recording: dict[str, Any] = {}
        if state == "end":
            recording_expected = is_true(body.get("is_record"))
            recording = {"session_id": session_id}
        dedupe = ":".join(
            (
                session_id,
                state or "?",
                stamp,
                str(body.get("request_pin") or ""),
                str(body.get("from_pin") or ""),
            )
        )
        return NormalisedEvent(
            provider_call_id=session_id,
            kind=kind,
            order_key=order_key(moment, RANKS.get(state, RANK_UNKNOWN)),
            dedupe_key=dedupe,
            timestamp=moment,
            direction=direction,
            client_phone_raw=client.raw[:200] if client.phone else "",
            client_phone=client.phone,
            external_phone=external,
            extension=extension,
            extensions=extensions,
            disconnect_reason=str(body.get("disconnect_reason") or "").strip()[:200],
            recording_expected=recording_expected,
            recording=recording,
            correlation_id=session_id,  # a call_back's session_id is the id of the call it creates
            settle=settle,
            raw=body,
        )
