"""Planfix telephony API ("API для телефонии"): the portal plays the PBX.

Both directions are form-urlencoded POSTs answered with JSON.

* Planfix → portal, `/hooks/planfix/<id>/`: the `token` field carries the portal's `pbx_token`. `makeCall`
  starts a click-to-call; any other command (Planfix sends an activation command whose name is not public) is
  answered 200 `{}` and logged, because anything else blocks the activation in Planfix.
* Portal → Planfix, `api_url`: every message carries `planfix_token`. `contact` answers routing questions;
  `event` opens and closes pop-up cards (INCOMING to each ringing extension, OUTGOING, ACCEPTED) and records the
  call (COMPLETED, also sent to ring-group colleagues so their cards close); `record` delivers the portal's
  permanent recording link once the file is stored.

Phones travel as digits without "+", as in every Planfix example. Decisions on the document's open questions
are in docs/providers/planfix.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from django.utils.translation import gettext, gettext_lazy
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from calls import services
from calls.models import Call, OutboundJob, Recording
from integrations.http import OutboundError
from integrations.models import ExternalPhone
from integrations.phones import digits_only
from integrations.providers.base import (
    FINAL,
    POPUP,
    CheckResult,
    CrmProvider,
    Field,
    JobSpec,
    Notice,
    ProviderError,
    RoutingAnswer,
    RoutingQuery,
    SchemaError,
    WebhookAuthError,
    WebhookInputError,
    extension_from,
    form_data,
    local_timestamp,
    post_form,
    routing_answer_from_json,
    secrets_equal,
)

logger = logging.getLogger("callbridge.planfix")

KIND_POPUP = "planfix.popup"
KIND_COMPLETED = "planfix.completed"
KIND_RECORD = "planfix.record"

INVALID_PARAMETERS = "Invalid parameters"
POPUP_EVENTS = {"ringing": "INCOMING", "dialing": "OUTGOING", "answered": "ACCEPTED"}
COMPLETED = "COMPLETED"
# Planfix's exact status vocabulary (crm.md §4). Incoming: a ring timeout and a caller who hung up first are
# both Missed for the call; Cancelled is for a colleague's card when someone else took the call.
INCOMING_STATUS = {"answered": "Success"}
INCOMING_DEFAULT = "Missed"
COLLEAGUE_STATUS = "Cancelled"
OUTGOING_STATUS = {
    "answered": "Success",
    "busy": "Busy",
    "no_answer": "NoAnswer",
    "not_available": "NotAvailable",
    "failed": "NotAvailable",  # unreachable or a network failure: "the PBX got 'subscriber unavailable'"
    "not_allowed": "NotAllowed",
}
OUTGOING_DEFAULT = "NoAnswer"
CONNECT_TIMEOUT = 3.05
TOKEN_FIELDS = ("planfix_token", "token")
# A caller who withheld their number: Planfix's `event` has `phone` in every example and no value for "no number";
# left out, the message risks "Invalid parameters". "anonymous" (the SIP convention for a withheld caller id)
# matches no contact, so Planfix shows the call without one (docs/providers/planfix.md).
ANONYMOUS_PHONE = "anonymous"
# COMPLETED legs: the call's own (duration, status, recording, analytics), a colleague's closing card, or the
# card of an employee who talked and then transferred the call (their own talk time; see event_fields).
CALL_LEG, COLLEAGUE_LEG, TRANSFERRED_LEG = "call", "colleague", "transferred"
LEGS = {"completed": CALL_LEG, "leg_cancelled": COLLEAGUE_LEG, "leg_completed": TRANSFERRED_LEG}


def completion_status(call: Call) -> str:
    """The call's Planfix status, from our result enum."""
    if call.direction == Call.OUT:
        return OUTGOING_STATUS.get(call.result, OUTGOING_DEFAULT)
    return INCOMING_STATUS.get(call.result, INCOMING_DEFAULT)


def _phone_digits(e164: str, raw: str = "") -> str:
    return digits_only(e164 or raw)


def _external_phone_label(call: Call) -> str:
    phone = ExternalPhone.objects.filter(tenant_id=call.tenant_id, number=call.external_phone).first()
    return phone.label if phone else ""


# What an `analytics` value may name; any other value is sent as fixed text. Evaluated when the message is sent.
ANALYTICS_ATTRIBUTES: dict[str, Callable[[Call], Any]] = {
    "client_phone": lambda c: _phone_digits(c.client_phone, c.client_phone_raw),
    "external_phone": lambda c: _phone_digits(c.external_phone),
    "external_phone_label": _external_phone_label,
    "direction": lambda c: c.direction,
    "result": lambda c: c.result,
    "status": completion_status,
    "talk_seconds": lambda c: c.talk_seconds or 0,
    "wait_seconds": lambda c: c.wait_seconds or 0,
    "started_at": lambda c: local_timestamp(c.started_at, c.tenant.tz),
    "answered_at": lambda c: local_timestamp(c.answered_at, c.tenant.tz),
    "ended_at": lambda c: local_timestamp(c.ended_at, c.tenant.tz),
    "responsible_extension": lambda c: c.responsible_extension,
    "rang_extensions": lambda c: ",".join(c.rang_extensions or []),
    "pbx_call_id": lambda c: c.provider_call_id,
}


# Refusals of the click-to-call guard (calls/click_to_call.py), in Planfix's error shape; the PBX was not asked.
GUARD_STATUS = {"throttled": 429, "region": 403, "number_type": 403}


# The number check_connection() asks about: a valid-looking number no client has, so nothing is found or changed.
CHECK_PHONE = "70000000000"


class PlanfixProvider(CrmProvider):
    key = "planfix"
    auth_failure_status = 401
    settings_fields = (
        Field(
            "api_url",
            "url",
            help=gettext_lazy("Planfix address for PBX requests, e.g. https://acme.planfix.ru/tel/api"),
        ),
        Field(
            "analytics", "map", default={}, help=gettext_lazy("Planfix field → call attribute or fixed text")
        ),
    )
    secret_fields = (Field("planfix_token", "secret"), Field("pbx_token", "secret", issued=True))
    inbound_paths = ("",)
    job_kinds = {KIND_POPUP: POPUP, KIND_COMPLETED: FINAL, KIND_RECORD: FINAL}

    @classmethod
    def clean_settings(cls, data: dict[str, Any] | None) -> dict[str, Any]:
        cleaned = super().clean_settings(data)
        analytics = {}
        for name, source in (cleaned.get("analytics") or {}).items():
            field_name = name.strip()
            if field_name.startswith("data_"):
                # The admin writes the Planfix field's name; the data_ prefix is the wire's business.
                field_name = field_name[len("data_") :]
            if not field_name:
                raise SchemaError("settings.analytics", "a Planfix field name is empty")
            analytics[field_name] = source
        if "analytics" in cleaned:
            cleaned["analytics"] = analytics
        return cleaned

    # ---- inbound: Planfix → portal ----------------------------------------------------------------------

    def parser_classes(self, action: str) -> list[type]:
        return [FormParser, MultiPartParser]

    def authenticate(self, request: Any, action: str) -> None:
        # Checked before any other field is looked at, so a bad token is a 401 even when the rest is invalid.
        try:
            token = request.POST.get("token")
        except Exception:  # a body Django cannot parse carries no token either
            token = None
        if not secrets_equal(token, self.secrets.get("pbx_token")):
            raise WebhookAuthError("Invalid token")

    def handle(self, request: Request, action: str) -> Response:
        if action:
            raise WebhookInputError(INVALID_PARAMETERS)
        data = form_data(request)
        cmd = str(data.get("cmd") or "").strip()
        if not cmd:
            raise WebhookInputError(INVALID_PARAMETERS)
        handler = self.commands.get(cmd)
        if handler is None:
            logger.info(
                "planfix %s: command %r answered 200 and ignored", self.connection.public_id, cmd[:100]
            )
            return Response({})
        return handler(self, data)

    def make_call(self, data: Any) -> Response:
        extension = extension_from(data.get("from"))
        phone = str(data.get("to") or "").strip()
        if not extension or not phone:
            raise WebhookInputError(INVALID_PARAMETERS)
        outcome = services.originate(self.connection.tenant, extension, phone, crm_connection=self.connection)
        if outcome.ok:
            return Response({})
        if outcome.code in {"unknown_extension", "bad_number"}:
            logger.info("planfix makeCall refused: %s", outcome.error)
            raise WebhookInputError(INVALID_PARAMETERS)
        if outcome.code in GUARD_STATUS:  # the click-to-call guard: the PBX was not asked
            return Response({"error": outcome.error}, status=GUARD_STATUS[outcome.code])
        return Response({"error": self._originate_failure(outcome)}, status=502)

    @staticmethod
    def _originate_failure(outcome: services.OriginateOutcome) -> str:
        if outcome.code == "no_pbx":
            return "No PBX is connected to the portal for this account"
        if outcome.code == "pbx_unreachable":
            return "The PBX could not be reached; try again in a minute"
        return f"The PBX refused the call: {outcome.error}"[:300]

    commands: dict[str, Callable[[PlanfixProvider, Any], Response]] = {"makeCall": make_call}

    # ---- routing: contact -------------------------------------------------------------------------------

    def answers_routing(self, query: RoutingQuery) -> bool:
        return bool(query.caller and self.settings.get("api_url") and self.secrets.get("planfix_token"))

    def lookup(self, query: RoutingQuery, timeout: float) -> RoutingAnswer | None:
        """`contact`: the caller's name and the short number of the employee responsible for the client.
        Runs in a routing thread: connection fields and HTTP only, no database."""
        fields = {"cmd": "contact", "phone": digits_only(query.caller)}
        if query.provider_call_id:
            fields["callid"] = query.provider_call_id
        fields.update(self.token_fields())
        try:
            response = post_form(
                self.settings["api_url"],
                fields,
                secrets=self.secret_values(),
                timeout=(min(CONNECT_TIMEOUT, timeout), timeout),
            )
        except OutboundError as exc:
            # How Planfix answers an unknown number is not documented: a refusal other than a bad token means
            # "no match", while a bad token, 5xx and timeouts are failures the circuit breaker counts.
            if exc.permanent and exc.status is not None and exc.status not in {401, 403}:
                return None
            raise
        # The example gives `responsible` as a JSON number, the table as a "short number": both are read.
        return routing_answer_from_json(response, "contact_name", "responsible")

    # ---- Test connection --------------------------------------------------------------------------------

    def check_connection(self) -> CheckResult:
        """`contact` for a number no client has: a read that changes nothing in Planfix and proves the address
        and planfix_token (a bad token is refused with 401/403)."""
        url, token = self.settings.get("api_url"), self.secrets.get("planfix_token")
        if not (url and token):
            return CheckResult(False, gettext("api_url and planfix_token must both be set"))
        fields = {"cmd": "contact", "phone": CHECK_PHONE, **self.token_fields()}
        try:
            response = post_form(url, fields, secrets=self.secret_values())
        except OutboundError as exc:
            status = {"status": exc.status}
            if exc.status in {401, 403}:
                summary = gettext("Planfix refused planfix_token (HTTP %(status)s)") % status
                return CheckResult(False, summary, exc.body[:500])
            if exc.permanent and exc.status is not None:
                # An unknown number may be answered with a 4xx: the address and token were accepted.
                summary = gettext("Planfix answered (HTTP %(status)s for an unknown number)") % status
                return CheckResult(True, summary, exc.body[:500])
            summary = gettext("Planfix could not be reached: %(error)s") % {"error": exc}
            return CheckResult(False, summary, exc.body[:500])
        summary = gettext("Planfix answered the contact request (HTTP %(status)s)")
        return CheckResult(True, summary % {"status": response.status_code}, response.text[:500])

    # ---- outbound: event, record ------------------------------------------------------------------------

    def jobs_for(self, call: Call, notices: Sequence[Notice]) -> list[JobSpec]:
        if call.direction not in {Call.IN, Call.OUT}:
            return []  # Planfix's `type` knows only in and out
        specs: dict[str, JobSpec] = {}
        for notice in notices:
            spec = self._spec(call, notice)
            if spec is None:
                continue
            if notice.kind in {"leg_cancelled", "leg_completed"} and spec.dedupe_key in specs:
                continue  # the call's own COMPLETED to this extension already closes its card
            specs[spec.dedupe_key] = spec  # ...and replaces a colleague's COMPLETED to the same extension
        return list(specs.values())

    def _spec(self, call: Call, notice: Notice) -> JobSpec | None:
        ext = notice.extension
        if notice.kind in POPUP_EVENTS:
            if not ext:
                return None
            event = POPUP_EVENTS[notice.kind]
            return JobSpec(
                KIND_POPUP, f"{call.pk}:{event}:{ext}", {"event": event, "ext": ext}, call, notice.order_key
            )
        if notice.kind in LEGS:
            hints: dict[str, Any] = {"event": COMPLETED, "ext": ext, "leg": LEGS[notice.kind]}
            if notice.talk_seconds is not None:
                hints["talk_seconds"] = notice.talk_seconds
            return JobSpec(KIND_COMPLETED, f"{call.pk}:{COMPLETED}:{ext}", hints, call, notice.order_key)
        if notice.kind == "recording_stored":
            return JobSpec(KIND_RECORD, f"{call.pk}:record", {}, call, notice.order_key)
        if notice.kind == "recording_link_changed":  # `record` again, with the new link
            version = call.recording.link_version
            return JobSpec(KIND_RECORD, f"{call.pk}:record:v{version}", {}, call, notice.order_key)
        return None

    def perform(self, job: OutboundJob) -> str:
        call = job.call
        if call is None:
            raise ProviderError(f"{job.kind} job {job.pk} has no call", permanent=True)
        if job.kind == KIND_RECORD:
            fields = self.record_fields(call)
            if fields is None:
                return "skipped: the recording is not stored"
        elif job.kind in {KIND_POPUP, KIND_COMPLETED}:
            fields = self.event_fields(call, job.payload)
        else:
            return super().perform(job)
        return self._send(fields)

    def event_fields(self, call: Call, hints: dict[str, Any]) -> dict[str, str]:
        """The `event` message, built from the call's state now."""
        event = hints.get("event", "")
        fields = {
            "cmd": "event",
            "type": call.direction,
            "event": event,
            "phone": _phone_digits(call.client_phone, call.client_phone_raw) or ANONYMOUS_PHONE,
            "diversion": _phone_digits(call.external_phone),
            "ext": hints.get("ext", ""),
            "callid": call.provider_call_id,
        }
        if event == COMPLETED:
            if hints.get("leg") == COLLEAGUE_LEG:
                status = COLLEAGUE_STATUS if call.result == "answered" else INCOMING_DEFAULT
                fields.update(duration="0", is_recorded="0", status=status)
            elif hints.get("leg") == TRANSFERRED_LEG:
                # Planfix keeps one call per callid: the call's own COMPLETED (to the last who talked) carries
                # its status, recording and analytics. The earlier employee's card is closed the way Planfix
                # documents for a call another employee holds (Cancelled), with their own talk time; outgoing
                # calls have no Cancelled, so Success.
                status = COLLEAGUE_STATUS if call.direction == Call.IN else OUTGOING_STATUS["answered"]
                fields.update(duration=str(hints.get("talk_seconds") or 0), is_recorded="0", status=status)
            else:
                fields.update(
                    duration=str(call.talk_seconds or 0),
                    is_recorded="1" if self._recording_expected(call) else "0",
                    status=completion_status(call),
                )
        # Unknown values are left out rather than sent empty (a call without a DID, a card without an owner).
        fields = {k: v for k, v in fields.items() if v != ""}
        fields.update(self.token_fields())
        if event == COMPLETED and hints.get("leg", CALL_LEG) == CALL_LEG:
            fields.update(self.analytics_fields(call))
        return fields

    def analytics_fields(self, call: Call) -> dict[str, str]:
        """`data_<field>` for each Planfix analytics field the admin mapped to a call attribute or fixed text."""
        fields = {}
        for name, source in (self.settings.get("analytics") or {}).items():
            attribute = ANALYTICS_ATTRIBUTES.get(source)
            value = attribute(call) if attribute else source
            fields[f"data_{name}"] = "" if value is None else str(value)
        return fields

    @staticmethod
    def _recording_expected(call: Call) -> bool:
        if not call.recording_expected:
            return False
        recording = Recording.objects.filter(call=call).first()
        # Once the portal knows no file will come, Planfix should not wait for a `record`.
        return recording is None or recording.state not in {Recording.UNAVAILABLE, Recording.PURGED}

    def record_fields(self, call: Call) -> dict[str, str] | None:
        recording = Recording.objects.filter(call=call).first()
        if recording is None or recording.state != Recording.STORED:
            return None
        return {
            "cmd": "record",
            "callid": call.provider_call_id,
            "record_link": recording.public_url,
            "is_temp": "0",  # the portal's link is permanent: Planfix may stream it as well as copy it
            **self.token_fields(),
        }

    def token_fields(self) -> dict[str, str]:
        """The Planfix token under both names the documentation uses: its prose (seed 000 and
        planfix.com/help/VoIP_API: "the special key must always be passed in the body of the request, in the
        'token' field") says `token`, every parameter table and example says `planfix_token`. Nothing says a
        second field is refused, so both carry the same value."""
        token = self.secrets.get("planfix_token", "")
        return dict.fromkeys(TOKEN_FIELDS, token)

    def _send(self, fields: dict[str, str]) -> str:
        url = self.settings.get("api_url")
        if not url:
            raise ProviderError("api_url is not set", permanent=True, flag_connection=True)
        try:
            response = post_form(url, fields, secrets=self.secret_values())
        except OutboundError as exc:
            raise self._verdict(exc, fields) from None
        return f"HTTP {response.status_code} {response.text[:200]}".strip()

    def _verdict(self, exc: OutboundError, fields: dict[str, str]) -> Exception:
        if exc.status == 401:
            return ProviderError(
                "Planfix refused planfix_token (401): it was probably changed in Planfix; paste the new one",
                status=401,
                permanent=True,
                flag_connection=True,
                body=exc.body,
            )
        if exc.status == 400:
            sent = {k: v for k, v in fields.items() if k not in TOKEN_FIELDS}
            logger.warning("planfix %s: Planfix refused %s as invalid parameters", self.connection, sent)
            return ProviderError(
                f"Planfix refused the {fields.get('cmd')} message as invalid parameters (400)",
                status=400,
                permanent=True,
                body=exc.body,
            )
        if exc.status == 404:
            return ProviderError(
                "Planfix answered 404: check api_url", status=404, permanent=True, flag_connection=True
            )
        return exc
