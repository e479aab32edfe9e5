"""WireCRM "API PBX" (app "Интеграция произвольной телефонии"): the portal plays the PBX.

* Portal → WireCRM: NOTIFY_* messages POSTed as multipart/form-data to the secret `webhook_url`, with exactly
  the field names of WireCRM's parameter lists (its examples are partly wrong: the NOTIFY_START example is a
  NOTIFY_OUT_START). WireCRM builds its call history from all of them, so none ever expires, and for each call
  NOTIFY_START (or NOTIFY_OUT_START) goes first: it is ordered before every other message of the call.
* NOTIFY_START is also a routing answer: when the routing question carries the PBX call id, it is sent
  synchronously within `start_timeout_ms`, and `{"caller_name": …}` / `{"redirect": "101"}` in WireCRM's answer
  become the display name and the responsible extension. A NOTIFY_START that got a 2xx in time is recorded by
  the routing ledger (the RoutingDecision lists the connection as asked, not late, not failed); the outbox's
  own NOTIFY_START job then has nothing to send.
* WireCRM → portal, `/hooks/wirecrm/<id>/make-call`: click-to-call (form `from`, `to`) authenticated by the
  `x-pbx-authentication` header; answered `{"status": "1"}` or `{"status": "0", "error": "…"}`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from calls import services
from calls.models import Call, OutboundJob, Recording, RoutingDecision
from integrations.http import OutboundError
from integrations.phones import digits_only
from integrations.providers.base import (
    FINAL,
    CheckResult,
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
    extension_from,
    form_data,
    local_timestamp,
    post_form,
    routing_answer_from_json,
    secrets_equal,
)

logger = logging.getLogger("callbridge.wirecrm")

NOTIFY_START = "NOTIFY_START"
NOTIFY_INTERNAL = "NOTIFY_INTERNAL"
NOTIFY_END = "NOTIFY_END"
NOTIFY_OUT_START = "NOTIFY_OUT_START"
NOTIFY_OUT_END = "NOTIFY_OUT_END"
NOTIFY_RECORD = "NOTIFY_RECORD"
KINDS = {
    event: f"wirecrm.{event.lower()}"
    for event in (NOTIFY_START, NOTIFY_INTERNAL, NOTIFY_END, NOTIFY_OUT_START, NOTIFY_OUT_END, NOTIFY_RECORD)
}
EVENT_OF_KIND = {kind: event for event, kind in KINDS.items()}
# The first message of a call sorts before every event order key, so the outbox sends it first.
FIRST_ORDER_KEY = ""
CLOSING_EVENTS = (NOTIFY_END, NOTIFY_OUT_END)

# WireCRM's exact vocabulary (crm.md §4).
DISPOSITIONS = {
    "answered": "answered",
    "busy": "busy",
    "cancelled": "cancel",
    "missed": "no answer",
    "no_answer": "no answer",
    "not_available": "failed",
    "not_allowed": "failed",
    "failed": "failed",
}
DEFAULT_DISPOSITION = "failed"
NO_OUTBOUND_NUMBER = "0"  # WireCRM: caller_id of an outgoing call when no outbound number is set
CONNECT_TIMEOUT = 3.05
MAKE_CALL = "make-call"
POPUP_TTL_SECONDS = 120  # base.POPUP's ttl: the ringing pop-ups of Planfix and RetailCRM

# Click-to-call failures, shown to the WireCRM user.
MESSAGES = {
    "missing_from": "Не указан внутренний номер сотрудника",
    "bad_from": "Внутренний номер сотрудника должен состоять из 2–6 цифр",
    "missing_to": "Не указан номер телефона клиента",
    "no_pbx": "К порталу не подключена АТС",
    "unknown_extension": "Внутренний номер {extension} не найден в АТС",
    "bad_number": "Номер телефона клиента указан неверно",
    "pbx_refused": "АТС отклонила вызов",
    "pbx_unreachable": "АТС недоступна, повторите попытку через минуту",
    # Refusals of the click-to-call guard (calls/click_to_call.py): the PBX was not asked.
    "throttled": "Слишком много вызовов с этого подключения, повторите попытку позже",
    "region": "Звонки в этот регион запрещены настройками портала",
    "number_type": "Звонки на платные номера и номера с разделением стоимости запрещены",
}


def disposition(call: Call) -> str:
    return DISPOSITIONS.get(call.result, DEFAULT_DISPOSITION)


def _digits(e164: str, raw: str = "") -> str:
    return digits_only(e164 or raw)


def _plus(e164: str, raw: str = "") -> str:
    digits = _digits(e164, raw)
    return f"+{digits}" if digits else ""


def start_fields(
    pbx_call_id: str, started_at: dt.datetime | None, tz: dt.tzinfo, caller: str, did: str
) -> dict:
    """NOTIFY_START, the same whether the routing service or the outbox sends it. Incoming numbers are written
    as digits without "+", as WireCRM's NOTIFY_END example writes them."""
    return {
        "event": NOTIFY_START,
        "call_start": local_timestamp(started_at, tz),
        "pbx_call_id": pbx_call_id,
        # A withheld number: "0", WireCRM's own documented value for "no number" (NOTIFY_OUT_* caller_id).
        "caller_id": _digits(caller) or NO_OUTBOUND_NUMBER,
        "called_did": _digits(did),
    }


class WireCrmProvider(CrmProvider):
    key = "wirecrm"
    auth_failure_status = 401
    settings_fields = (
        Field("start_timeout_ms", "int", default=700, minimum=100, maximum=5000),
        # NOTIFY_INTERNAL opens a card: not sent this long after the extension started ringing, or once the
        # call has ended, it expires (the same two minutes as other CRMs' ringing pop-ups).
        Field("popup_ttl_seconds", "int", default=POPUP_TTL_SECONDS, minimum=10, maximum=3600),
    )
    secret_fields = (Field("webhook_url", "url"), Field("pbx_token", "secret", issued=True))
    inbound_paths = (MAKE_CALL,)
    # WireCRM's history is built from NOTIFY_START/END/OUT_*/RECORD: those never expire, and all wait for the
    # call's earlier messages. NOTIFY_INTERNAL only opens a card (seed 002: "Всплывающая карточка"), so it is a
    # pop-up: it expires with the call or after popup_ttl_seconds; the call's NOTIFY_END goes out regardless.
    job_kinds = {
        **{kind: FINAL for kind in KINDS.values()},
        KINDS[NOTIFY_INTERNAL]: JobKind(
            window=FINAL.window, ttl=dt.timedelta(seconds=POPUP_TTL_SECONDS), expires_on_call_end=True
        ),
    }
    # WireCRM plays record_link only when it is an MP3 (crm.md §4).
    playable_types = ("audio/mpeg",)

    # ---- inbound: click-to-call -------------------------------------------------------------------------

    def parser_classes(self, action: str) -> list[type]:
        return [FormParser, MultiPartParser]

    def error_body(self, status: int, message: str) -> Any:
        return {"status": "0", "error": message}

    def authenticate(self, request: Any, action: str) -> None:
        if not secrets_equal(request.headers.get("X-Pbx-Authentication"), self.secrets.get("pbx_token")):
            raise WebhookAuthError("Invalid token")

    def handle(self, request: Request, action: str) -> Response:
        if action != MAKE_CALL:
            raise WebhookInputError("Unknown endpoint")
        data = form_data(request)
        raw_from = str(data.get("from") or "").strip()
        phone = str(data.get("to") or "").strip()
        extension = extension_from(raw_from)
        if not raw_from:
            return self._refused(MESSAGES["missing_from"])
        if not extension:
            return self._refused(MESSAGES["bad_from"])
        if not phone:
            return self._refused(MESSAGES["missing_to"])
        outcome = services.originate(self.connection.tenant, extension, phone, crm_connection=self.connection)
        if outcome.ok:
            return Response({"status": "1"})
        logger.info("wirecrm make-call %s refused: %s (%s)", extension, outcome.error, outcome.code)
        message = MESSAGES.get(outcome.code, MESSAGES["pbx_refused"])
        return self._refused(message.format(extension=extension))

    @staticmethod
    def _refused(message: str) -> Response:
        # A business failure is a 200: WireCRM reads the JSON status, not the HTTP one.
        return Response({"status": "0", "error": message})

    # ---- routing: NOTIFY_START answered synchronously ---------------------------------------------------

    def answers_routing(self, query: RoutingQuery) -> bool:
        # Only with the PBX call id: a NOTIFY_START without it could not be tied to the call's later messages.
        if not (query.provider_call_id and self.secrets.get("webhook_url")):
            return False
        # Read here, in the routing service's own thread: lookup() runs in a worker thread without the database.
        self._routing_tz = self.connection.tenant.tz
        return True

    def asks_every_call(self, query: RoutingQuery) -> bool:
        # NOTIFY_START opens the call in WireCRM: with the call id it is sent on every call (never skipped for a
        # cached answer), and routing waits for it, so the outbox never sends it a second time.
        return bool(query.provider_call_id)

    def lookup(self, query: RoutingQuery, timeout: float) -> RoutingAnswer | None:
        """Send NOTIFY_START within start_timeout_ms and read WireCRM's answer. Any failure, or a 2xx that came
        too late, raises: the routing ledger then shows NOTIFY_START as not delivered and the outbox sends it."""
        budget = max(0.05, min(timeout, self.settings["start_timeout_ms"] / 1000))
        call = query.call
        fields = start_fields(
            query.provider_call_id,
            call.started_at if call and call.started_at else timezone.now(),
            getattr(self, "_routing_tz", None) or dt.UTC,
            query.caller,
            query.did,
        )
        began = time.monotonic()
        response = self._send(fields, timeout=(min(CONNECT_TIMEOUT, budget), budget))
        elapsed = time.monotonic() - began
        if elapsed > budget:
            raise ProviderError(
                f"NOTIFY_START answered after {elapsed * 1000:.0f} ms, over start_timeout_ms; sent again later"
            )
        return routing_answer_from_json(response, "caller_name", "redirect")

    def _started_during_routing(self, call: Call) -> bool:
        """Whether a synchronous NOTIFY_START of this call got a 2xx in time (the routing ledger says so)."""
        decisions = RoutingDecision.objects.filter(
            Q(call=call)
            | Q(pbx_connection_id=call.pbx_connection_id, provider_call_id=call.provider_call_id),
            tenant_id=call.tenant_id,
        ).exclude(provider_call_id="")
        key = self.connection.key
        for detail in decisions.values_list("detail", flat=True):
            detail = detail or {}
            missed = [*detail.get("late", []), *detail.get("failed", [])]
            if key in detail.get("asked", []) and key not in missed:
                return True
        return False

    # ---- outbound: NOTIFY_* -----------------------------------------------------------------------------

    def jobs_for(self, call: Call, notices: Sequence[Notice]) -> list[JobSpec]:
        if call.direction == Call.IN:
            opening, closing = NOTIFY_START, NOTIFY_END
        elif call.direction == Call.OUT:
            opening, closing = NOTIFY_OUT_START, NOTIFY_OUT_END
        else:
            return []  # WireCRM has no internal calls
        if not notices:
            return []
        # Asked for with every change of the call; the dedupe key makes every request after the first a no-op.
        specs = [self._spec(call, opening, FIRST_ORDER_KEY)]
        for notice in notices:
            if notice.kind == "recording_link_changed":  # NOTIFY_RECORD again, with the new link, alone
                spec = self._spec(call, NOTIFY_RECORD, notice.order_key)
                return [replace(spec, dedupe_key=f"{spec.dedupe_key}:v{call.recording.link_version}")]
        for notice in notices:
            if notice.kind == "ringing" and call.direction == Call.IN and notice.extension:
                specs.append(self._spec(call, NOTIFY_INTERNAL, notice.order_key, notice.extension))
            elif notice.kind == "completed":
                specs.append(self._spec(call, closing, notice.order_key))
            elif notice.kind == "recording_stored":
                specs.append(self._spec(call, NOTIFY_RECORD, notice.order_key))
        return specs

    def _spec(self, call: Call, event: str, order_key: str, internal: str = "") -> JobSpec:
        dedupe = f"{call.pk}:{event}:{internal}" if internal else f"{call.pk}:{event}"
        hints = {"event": event, "internal": internal} if internal else {"event": event}
        expires_at = None
        if event == NOTIFY_INTERNAL:
            ttl = int(self.settings.get("popup_ttl_seconds") or POPUP_TTL_SECONDS)
            expires_at = timezone.now() + dt.timedelta(seconds=ttl)
        return JobSpec(KINDS[event], dedupe, hints, call, order_key, expires_at=expires_at)

    def perform(self, job: OutboundJob) -> str:
        call = job.call
        event = EVENT_OF_KIND.get(job.kind)
        if event is None:
            return super().perform(job)
        if call is None:
            raise ProviderError(f"{job.kind} job {job.pk} has no call", permanent=True)
        if event == NOTIFY_START and self._started_during_routing(call):
            return "skipped: NOTIFY_START was answered in time during routing"
        if event == NOTIFY_INTERNAL and self._closed(job):
            return "skipped: the call's end was already sent; a card must not open after it"
        fields = self.message_fields(call, event, job.payload)
        if fields is None:
            return "skipped: the recording is not stored"
        response = self._send(fields)
        if event == NOTIFY_START:
            # Too late to route this call, but not the caller's next one.
            from calls.routing import remember_answer

            answer = routing_answer_from_json(response, "caller_name", "redirect")
            remember_answer(self.connection, call.client_phone, call.external_phone, answer)
        return f"HTTP {response.status_code} {response.text[:200]}".strip()

    def _closed(self, job: OutboundJob) -> bool:
        return OutboundJob.objects.filter(
            connection_ref=job.connection_ref,
            call_id=job.call_id,
            kind__in=[KINDS[e] for e in CLOSING_EVENTS],
            status=OutboundJob.SENT,
        ).exists()

    def message_fields(self, call: Call, event: str, hints: dict[str, Any]) -> dict[str, str] | None:
        """One NOTIFY_* message from the call's state now; None when there is nothing to send."""
        tz = call.tenant.tz
        if event == NOTIFY_RECORD:
            recording = Recording.objects.filter(call=call).first()
            if recording is None or recording.state != Recording.STORED:
                return None
            return {"event": event, "pbx_call_id": call.provider_call_id, "record_link": recording.public_url}
        if event in {NOTIFY_START, NOTIFY_INTERNAL, NOTIFY_END}:
            fields = start_fields(
                call.provider_call_id,
                call.started_at,
                tz,
                call.client_phone or call.client_phone_raw,
                call.external_phone,
            )
            fields["event"] = event
            if event == NOTIFY_INTERNAL:
                fields["internal"] = hints.get("internal", "")
            elif event == NOTIFY_END:
                fields.update(
                    internal=call.responsible_extension,
                    duration=str(call.talk_seconds or 0),
                    disposition=disposition(call),
                )
        else:
            # Outgoing: the dialled number as WireCRM's examples write it (with "+"); caller_id is our outbound
            # number, or "0" when the PBX did not say which one it used.
            fields = {
                "event": event,
                "call_start": local_timestamp(call.started_at, tz),
                "pbx_call_id": call.provider_call_id,
            }
            destination = _plus(call.client_phone, call.client_phone_raw)
            caller_id = _digits(call.external_phone) or NO_OUTBOUND_NUMBER
            internal = call.initiating_extension or call.responsible_extension
            if event == NOTIFY_OUT_START:
                fields.update(destination=destination, caller_id=caller_id, internal=internal)
            else:
                fields.update(
                    caller_id=caller_id,
                    destination=destination,
                    internal=internal,
                    duration=str(call.talk_seconds or 0),
                    disposition=disposition(call),
                )
        # `internal` is optional in every message: left out when no extension is known.
        if not fields.get("internal"):
            fields.pop("internal", None)
        return fields

    # WireCRM only receives our NOTIFY_* messages: any request to webhook_url would be taken as a call event.
    check_sends_request = False

    def check_connection(self) -> CheckResult:
        """No harmless request exists (every POST to webhook_url is a call event), so check what can be
        checked without sending: the URL, its DNS name and, for https, the TLS certificate."""
        from integrations import http

        url = self.secrets.get("webhook_url")
        if not url:
            return CheckResult(False, gettext("webhook_url is not set"))
        try:
            found = http.probe(url)
        except OutboundError as exc:
            return CheckResult(
                False, gettext("WireCRM's webhook_url cannot be reached: %(error)s") % {"error": exc}
            )
        detail = f"addresses: {', '.join(found.addresses)}"
        if found.tls:
            detail += f"; certificate: {found.certificate_subject}, valid until {found.certificate_expires}"
        return CheckResult(
            True,
            gettext("URL, DNS and TLS checked; WireCRM offers no harmless request, so no message was sent"),
            detail,
        )

    def _send(self, fields: dict[str, str], timeout: Any = None) -> Any:
        url = self.secrets.get("webhook_url")
        if not url:
            raise ProviderError("webhook_url is not set", permanent=True, flag_connection=True)
        try:
            return post_form(url, fields, secrets=self.secret_values(), multipart=True, timeout=timeout)
        except OutboundError as exc:
            if exc.status in {404, 410}:
                raise ProviderError(
                    f"WireCRM answered {exc.status}: the notification link was revoked or regenerated; "
                    "paste the new webhook_url",
                    status=exc.status,
                    permanent=True,
                    flag_connection=True,
                    body=exc.body,
                ) from None
            raise
