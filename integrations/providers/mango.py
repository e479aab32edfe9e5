"""Mango Office VPBX, main API (server-to-server webhooks and commands).

Wire facts (shared/protocols/pbx.md §2): every request, both ways, is a form POST with `vpbx_api_key`, `json` and
`sign` = lower-case hex sha256(vpbx_api_key + json + vpbx_api_salt). The PBX appends fixed suffixes to the base
URL the admin pasted: `events/call` (one notification per leg state, ordered per leg by `seq`),
`events/summary` (the call's final word), `events/recording`, `events/record/added`, `events/dtmf`,
`result/<command>` (async results of our commands) and a "check connection" `ping`. We send `commands/callback`
(click-to-call), `commands/route` (CRM-driven routing of a call waiting in the IVR), `queries/recording/post`
(a temporary recording link), `config/users/request` (directory) and `stats/request` + `stats/result`
(reconciliation). Decisions on the digest's open questions are in docs/providers/mango.md.

Call model: `entry_id` is the Call, `call_id` one leg (IVR, queue, each employee rung, each transfer). Every
event is stored; the pipeline recomputes the call from all of them, so the kinds given here decide the sets of
extensions that rang and answered. A call is final for CRMs at its summary plus the recording outcome
(`events/recording` Completed, `record/added`, or nothing within `recording_grace_seconds`).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from django.conf import settings as django_settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework.response import Response

from integrations import http
from integrations.phones import digits_only, to_e164_or_none
from integrations.providers.base import (
    DirectoryEntry,
    Field,
    JobKind,
    JobSpec,
    OriginateResult,
    PbxProvider,
    ProviderError,
    SchemaError,
    WebhookAuthError,
    WebhookInputError,
    secrets_equal,
)

if TYPE_CHECKING:
    from django.http import HttpRequest
    from rest_framework.request import Request

    from calls.events import NormalisedEvent
    from calls.models import Call, OriginateRequest, OutboundJob, Recording

logger = logging.getLogger("callbridge.mango")

# ---------------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------------

# Our command ids say which command made a leg: click-to-call legs are outgoing whatever side the employee is on.
CALLBACK_PREFIX = "cb-"
ROUTE_PREFIX = "rt-"
COMMAND_ID_MAX_BYTES = 128
DISPLAY_NAME_MAX_BYTES = 64
# Mango allows one route, one directory request and one statistics request per 2 seconds per product (tenant).
RATE_WINDOW_SECONDS = 2
# Receipt time vs Mango's epoch values: within this of 0 means UTC, within this of ±3 h means "UTC+3" values.
MOSCOW_SHIFT = 3 * 3600
OFFSET_TOLERANCE = 30 * 60
OFFSET_MEMORY_SECONDS = 30 * 24 * 3600
# Reconciliation: leave the last minutes to the webhooks still in flight; poll the export a few times.
RECONCILE_SETTLE = dt.timedelta(minutes=5)
STATS_POLL_WAITS = (5.0, 5.0)
STATS_KEY_SECONDS = 600
STATS_FIELDS = (
    "entry_id",
    "create",
    "start",
    "finish",
    "answer",
    "from_extension",
    "from_number",
    "to_extension",
    "to_number",
    "disconnect_reason",
    "line_number",
    "location",
    "records",
)
LOCATIONS = {"ivr": "ivr", "queue": "queue", "abonent": "agent"}
CALL_STATES = {"Appeared": "ringing", "Connected": "answered", "OnHold": "held", "Disconnected": "leg_ended"}
DIRECTIONS = {0: "internal", 1: "in", 2: "out"}
CLOUD_RECIPIENTS = {"cloud", "cloudandmail"}

# Result and disconnect codes (§2.6). Unknown codes are read as their class: 2219 → 2210 → 2200 → 2000.
RESULT_TEXT: dict[int, str] = {
    1000: "success",
    1100: "call ended normally",
    1110: "ended by the caller",
    1111: "no answer within the timeout",
    1120: "ended by the callee",
    1121: "busy",
    1122: "rejected by the callee",
    1123: "do-not-disturb",
    1130: "callee restriction",
    1131: "callee unavailable",
    1132: "callee not served",
    1133: "callee does not exist",
    1134: "too many forwards",
    1135: "forwarding forbidden",
    1140: "calls to this region are forbidden",
    1150: "caller restriction",
    1160: "group call failed",
    1170: "ended by the forwarding scheme",
    1180: "ended by command",
    1190: "callee inactive or off schedule",
    1300: "call ended normally",
    2000: "billing restriction",
    2100: "account inaccessible",
    2200: "access limited",
    2240: "no funds",
    2300: "direction blocked",
    2400: "billing error",
    3000: "bad request",
    3100: "invalid parameters",
    3101: "not a POST request",
    3102: "signature mismatch",
    3103: "required parameter missing",
    3104: "parameter has a wrong format",
    3105: "unknown API key",
    3111: "bad date range",
    3200: "wrong subscriber number",
    3300: "not found",
    3310: "call not found",
    3320: "recording not found",
    3330: "number not found",
    3340: "file not found",
    3400: "invalid JSON",
    4000: "cannot be done",
    4001: "not supported",
    4002: "recording too short",
    4100: "not allowed for this call",
    4101: "call ended or unknown",
    4102: "already recording",
    4104: "too many forwards",
    4200: "subscriber unreachable now",
    4290: "rate limit exceeded",
    4500: "security restriction",
    4501: "call-rate limit",
    4502: "caller black-listed",
    5000: "server error",
    5001: "overload",
    5002: "restart",
    5003: "technical problem",
    5004: "database error",
    5008: "service unavailable",
    5011: "timeout",
}


def describe(code: int) -> str:
    """The meaning of a result code, read by class when the exact code is unknown."""
    for candidate in (code, code // 10 * 10, code // 100 * 100, code // 1000 * 1000):
        if candidate in RESULT_TEXT:
            return RESULT_TEXT[candidate]
    return "unknown result"


def is_success(code: int) -> bool:
    # 1000 and 1001 ("with remarks") and any other 10xx: the command was accepted.
    return 1000 <= code < 1100


def sign(api_key: str, json_text: str, api_salt: str) -> str:
    """Mango's signature: hex sha256 over key + json + salt (a plain hash, not an HMAC)."""
    return hashlib.sha256(f"{api_key}{json_text}{api_salt}".encode()).hexdigest()


def compact_json(payload: Any) -> str:
    # Compact, and ASCII-only so the signed string is the same bytes under any charset Mango assumes.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True)


def _int(value: Any, default: int | None = None) -> int | None:
    """Mango sends seq, timestamps, codes and extensions sometimes as numbers, sometimes as strings."""
    if value is None or isinstance(value, bool):
        return default
    try:
        return int(str(value).strip())
    except ValueError:
        return default


def _text(value: Any) -> str:
    if value is None or isinstance(value, bool | dict | list):
        return ""
    return str(value).strip()


def _truncate_bytes(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")


def _short_hash(value: str) -> str:
    return hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest()[:8]


def _order_key(epoch: int, seq: int, tail: str) -> str:
    """Fixed width: the second the event happened, the leg's seq, then a stable tail for ties across legs."""
    return f"{max(epoch, 0):011d}.{max(seq, 0):06d}.{tail}"


def _unanswered_outcome(direction: str, reason: int | None) -> str:
    """Our result for a call nobody talked in. Incoming ones are missed, whatever the reason; for outgoing
    ones the reason tells busy from unreachable (§2.6 classes)."""
    if direction == "in":
        return "missed"
    code = reason or 0
    if code in (1121, 1122, 1193):
        return "busy"
    if code == 1110:
        return "cancelled"
    if 1130 <= code <= 1135 or 1190 <= code <= 1192 or 4200 <= code < 4300:
        return "not_available"
    if code == 1140 or 1150 <= code <= 1159 or 2000 <= code < 3000 or code in (4501, 4502):
        return "not_allowed"
    if 3200 <= code < 3300 or 5000 <= code < 6000:
        return "failed"
    return "no_answer"


class MangoProvider(PbxProvider):
    key = "mango"
    settings_fields = (
        Field("api_url", "url", default="https://app.mango-office.ru/vpbx/"),
        Field("crm_routing", "bool", default=True),
        Field("reconcile_hours", "int", default=24, minimum=0, maximum=24 * 14),
        Field("timestamp_offset", "str", default="auto"),
        Field("recording_grace_seconds", "int", default=60, minimum=0, maximum=3600),
    )
    secret_fields = (Field("api_key", "secret"), Field("api_salt", "secret"))
    inbound_paths = (
        "events/call",
        "events/summary",
        "events/recording",
        "events/record/added",
        "events/dtmf",
        "ping",
    )
    auth_failure_status = 403
    job_kinds = {
        # Useful only while the caller waits in the IVR: dies with the call, or after half a minute.
        "mango.route": JobKind(
            window=dt.timedelta(seconds=30),
            ttl=dt.timedelta(seconds=30),
            expires_on_call_end=True,
            ordered=False,
        ),
        "mango.recording_grace": JobKind(window=dt.timedelta(hours=6), ordered=False),
        "mango.reconcile": JobKind(window=dt.timedelta(hours=1), ordered=False),
    }

    # ---- configuration ----

    @classmethod
    def clean_settings(cls, data: dict[str, Any] | None) -> dict[str, Any]:
        data = dict(data or {})
        offset = data.get("timestamp_offset")
        if isinstance(offset, int) and not isinstance(offset, bool):
            data["timestamp_offset"] = str(offset)
        cleaned = super().clean_settings(data)
        offset = cleaned.get("timestamp_offset", "auto")
        if offset != "auto" and _int(offset) is None:
            raise SchemaError(
                "settings.timestamp_offset", f"must be 'auto' or a whole number of seconds, got {offset!r}"
            )
        if offset != "auto":
            cleaned["timestamp_offset"] = str(_int(offset))
        return cleaned

    @property
    def region(self) -> str:
        tenant = getattr(self.connection, "tenant", None)
        return getattr(tenant, "region", "") or "RU"

    # ---- inbound: authentication ----

    @staticmethod
    def _action(action: str) -> str:
        # A base URL pasted with a trailing slash makes Mango post to ".../<id>//events/call".
        return "/".join(part for part in (action or "").split("/") if part)

    def allows_unauthenticated(self, action: str) -> bool:
        # The cabinet's "check connection" button; what it signs is undocumented (open question 18).
        return self._action(action) in {"ping", ""}

    @staticmethod
    def _form(request: HttpRequest) -> dict[str, str]:
        """The posted form, parsed from the raw body so `json` is exactly the string Mango signed."""
        content_type = (request.META.get("CONTENT_TYPE") or "").lower()
        if content_type.startswith("multipart/"):
            return {k: request.POST.get(k, "") for k in request.POST}
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            return {}
        form: dict[str, str] = {}
        for name, value in parse_qsl(text, keep_blank_values=True):
            form.setdefault(name, value)
        return form

    def authenticate(self, request: HttpRequest, action: str) -> None:
        form = self._form(request)
        key, salt = self.secrets.get("api_key", ""), self.secrets.get("api_salt", "")
        given_key = form.get("vpbx_api_key", "")
        given_sign = form.get("sign", "").strip().lower()
        expected = sign(key, form.get("json", ""), salt) if key and salt else ""
        # One message for every failure: which part was wrong is no business of the sender's.
        if not secrets_equal(given_key, key) or not secrets_equal(given_sign, expected):
            raise WebhookAuthError("Invalid signature")

    def error_body(self, status: int, message: str) -> Any:
        code = {403: 3102, 400: 3104, 413: 3104}.get(status, 3000)
        return {"result": code, "error": message}

    # ---- inbound: events ----

    def handle(self, request: Request, action: str) -> Response:
        action = self._action(action)
        if action in {"ping", ""}:
            return Response({"result": 1000})
        if not (action.startswith("events/") or action.startswith("result/")):
            raise WebhookInputError(f"unknown action {action!r}")
        form = self._form(request._request)
        try:
            data = json.loads(form.get("json", ""))
        except ValueError:
            raise WebhookInputError("json is not valid JSON") from None
        if not isinstance(data, dict):
            raise WebhookInputError("json must be an object")
        handlers: dict[str, Callable[[dict[str, Any], str], list[NormalisedEvent]]] = {
            "events/call": self._call_events,
            "events/summary": self._summary_events,
            "events/recording": self._recording_events,
            "events/record/added": self._record_added_events,
            "events/dtmf": self._dtmf_events,
        }
        if action in handlers:
            if not _text(data.get("entry_id")):
                raise WebhookInputError("entry_id is required")
            events = handlers[action](data, action)
        elif action.startswith("result/"):
            events = self._result_events(data, action)
        else:
            events = self._other_events(data, action)
        if events:
            from calls.services import ingest

            ingest(self.connection, events)
        return Response({"result": 1000})

    # -- time stamps --

    def _offset(self, reference: int | None = None) -> int:
        """Seconds to add to Mango's epoch values to get true UTC (open question 13).

        A number in `timestamp_offset` is used as is. `auto` compares a real-time event's time stamp with the
        receipt time: about 0 means UTC, about +3 h means the values are Moscow wall time written as epoch
        ("UTC+3", as the current documentation labels them), so 3 h are subtracted. A confident answer is
        remembered per connection for payloads that cannot tell (statistics, late events)."""
        setting = str(self.settings.get("timestamp_offset") or "auto")
        if setting != "auto":
            return _int(setting, 0) or 0
        memory_key = f"mango:timestamp-offset:{self.connection.pk}"
        if reference:
            gap = reference - int(time.time())
            for offset in (0, -MOSCOW_SHIFT, MOSCOW_SHIFT):
                if abs(gap + offset) <= OFFSET_TOLERANCE:
                    if cache.get(memory_key) != offset:
                        cache.set(memory_key, offset, OFFSET_MEMORY_SECONDS)
                        if offset:
                            logger.info("mango %s: time stamps are shifted by %s s", self.connection, -offset)
                    return offset
        remembered = cache.get(memory_key)
        return int(remembered) if remembered is not None else 0

    @staticmethod
    def _when(epoch: int | None, offset: int) -> dt.datetime:
        if not epoch:
            return timezone.now()
        return dt.datetime.fromtimestamp(epoch + offset, tz=dt.UTC)

    # -- parties --

    def _phone(self, value: Any) -> str:
        return to_e164_or_none(_text(value), self.region) or ""

    @staticmethod
    def _is_callback(data: dict[str, Any]) -> bool:
        return _text(data.get("command_id")).startswith(CALLBACK_PREFIX) or bool(
            data.get("callback_initiator")
        )

    def _leg_parties(self, data: dict[str, Any]) -> dict[str, Any]:
        """Direction, the employee the leg is about, and the client's number, for one events/call leg."""
        party_from = data.get("from") if isinstance(data.get("from"), dict) else {}
        party_to = data.get("to") if isinstance(data.get("to"), dict) else {}
        from_ext, to_ext = _text(party_from.get("extension")), _text(party_to.get("extension"))
        callback = self._is_callback(data)
        if callback:
            direction = "out"
        elif from_ext and to_ext:
            direction = "internal"
        elif from_ext:
            direction = "out"
        else:
            # The callee is an employee, or nobody yet (the IVR or a queue): a call from outside.
            direction = "in"
        # In a callback the PBX first rings the employee (the callee of that leg), then dials the client.
        employee_leg = callback and bool(to_ext) and not from_ext
        extension = from_ext if direction == "out" and not employee_leg else to_ext
        client_raw = ""
        if direction == "in":
            client_raw = "" if from_ext else _text(party_from.get("number"))
        elif direction == "out" and not employee_leg:
            client_raw = "" if to_ext else _text(party_to.get("number"))
        return {
            "direction": direction,
            "extension": extension,
            "client_raw": client_raw,
            "client": self._phone(client_raw),
            "line": self._phone(party_to.get("line_number")),
            "employee_leg": employee_leg,
        }

    # -- events/call --

    def _call_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        from calls.events import NormalisedEvent

        entry_id, leg_id = _text(data.get("entry_id")), _text(data.get("call_id"))
        state = _text(data.get("call_state"))
        if not leg_id or not state:
            raise WebhookInputError("call_id and call_state are required")
        seq = _int(data.get("seq"), 0) or 0
        stamp = _int(data.get("timestamp"))
        offset = self._offset(stamp)
        when = self._when(stamp, offset)
        epoch = int(when.timestamp())
        location = LOCATIONS.get(_text(data.get("location") or data.get("locaton")).split(".")[0], "")
        parties = self._leg_parties(data)
        kind = CALL_STATES.get(state, "unknown")
        if kind == "answered" and location in {"ivr", "queue"}:
            # The IVR picking up, or music in a queue, is not a person answering: kept, but not an answer.
            kind = "unknown"
        if kind == "answered" and parties["employee_leg"]:
            # The employee took the callback's first leg: the client is only being dialled now.
            kind = "unknown"
        extension = parties["extension"] if location in {"agent", ""} else ""
        command_id = _text(data.get("command_id"))
        return [
            NormalisedEvent(
                provider_call_id=entry_id,
                kind=kind,
                order_key=_order_key(epoch, seq, _short_hash(leg_id)),
                dedupe_key=f"call:{leg_id}:{seq}:{state}",
                timestamp=when,
                leg_id=leg_id,
                direction=parties["direction"],
                location=location,
                client_phone_raw=parties["client_raw"],
                client_phone=parties["client"],
                external_phone=parties["line"],
                extension=extension,
                extensions=(extension,) if extension else (),
                disconnect_reason=_text(data.get("disconnect_reason")),
                correlation_id=command_id,
                raw=data,
            )
        ]

    # -- events/summary --

    def _summary_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        """The final word on the call, plus its start and answer, so a call whose leg notifications were lost
        still has its times and its employee. Derived events have their own dedupe keys."""
        from calls.events import NormalisedEvent
        from integrations.models import Extension

        entry_id = _text(data.get("entry_id"))
        party_from = data.get("from") if isinstance(data.get("from"), dict) else {}
        party_to = data.get("to") if isinstance(data.get("to"), dict) else {}
        created, talked, ended = (_int(data.get(f)) for f in ("create_time", "talk_time", "end_time"))
        offset = self._offset(ended)
        direction = DIRECTIONS.get(_int(data.get("call_direction"), -1), "")  # type: ignore[arg-type]
        reason = _int(data.get("disconnect_reason"))
        answered = _int(data.get("entry_result"), 0) == 1 and bool(talked)
        from_ext, to_ext = _text(party_from.get("extension")), _text(party_to.get("extension"))
        client_raw, employee = "", from_ext
        if direction == "in":
            client_raw, employee = _text(party_from.get("number")), to_ext
        elif direction == "out":
            client_raw = _text(party_to.get("number"))
        common = {
            "provider_call_id": entry_id,
            "direction": direction,
            "client_phone_raw": client_raw,
            "client_phone": self._phone(client_raw),
            "external_phone": self._phone(data.get("line_number")),
        }
        end_when = self._when(ended, offset)
        end_epoch = int(end_when.timestamp())
        start_when = self._when(created, offset) if created else end_when
        talk_seconds = max(0, (ended or 0) - (talked or 0)) if answered and ended else 0
        outcome = "answered" if answered else _unanswered_outcome(direction, reason)
        events = [
            NormalisedEvent(
                kind="ringing",
                order_key=_order_key(int(start_when.timestamp()), 0, "summary"),
                dedupe_key=f"summary:{entry_id}:start",
                timestamp=start_when,
                extension=from_ext if direction == "out" else "",
                raw={"derived_from": "events/summary"},
                **common,
            )
        ]
        if answered:
            answer_when = self._when(talked, offset)
            who = employee
            # For an incoming call to.extension may name a group; only a known employee counts as who answered.
            if direction == "in" and who:
                tenant_id = self.connection.tenant_id
                who = who if Extension.objects.filter(tenant_id=tenant_id, number=who).exists() else ""
            events.append(
                NormalisedEvent(
                    kind="answered",
                    order_key=_order_key(int(answer_when.timestamp()), 999998, "summary"),
                    dedupe_key=f"summary:{entry_id}:answer",
                    timestamp=answer_when,
                    location="agent",
                    extension=who,
                    extensions=(who,) if who else (),
                    raw={"derived_from": "events/summary"},
                    **common,
                )
            )
        events.append(
            NormalisedEvent(
                kind="completed",
                order_key=_order_key(end_epoch, 999999, "summary"),
                dedupe_key=f"summary:{entry_id}",
                timestamp=end_when,
                extension=employee,
                disconnect_reason=_text(data.get("disconnect_reason")),
                outcome=outcome,
                talk_seconds=talk_seconds,
                duration_seconds=max(0, (ended or 0) - (created or 0)) if created and ended else None,
                raw=data,
                **common,
            )
        )
        return events

    # -- events/recording and events/record/added --

    def _recording_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        from calls.events import NormalisedEvent

        entry_id, recording_id = _text(data.get("entry_id")), _text(data.get("recording_id"))
        state = _text(data.get("recording_state"))
        seq = _int(data.get("seq"), 0) or 0
        stamp = _int(data.get("timestamp"))
        when = self._when(stamp, self._offset(stamp))
        kind, expected = "unknown", None
        if state == "Completed":
            code = _int(data.get("completion_code"), 0) or 0
            recipient = _text(data.get("recipient")).replace(" ", "").lower()
            # Only a file kept in Mango's cloud can be fetched through the API; 4002 means too short, not saved.
            kind, expected = "recording_ready", is_success(code) and recipient in CLOUD_RECIPIENTS
        return [
            NormalisedEvent(
                provider_call_id=entry_id,
                kind=kind,
                order_key=_order_key(int(when.timestamp()), seq, "rec" + _short_hash(recording_id)),
                dedupe_key=f"recording:{recording_id}:{state}:{seq}",
                timestamp=when,
                leg_id=_text(data.get("call_id")),
                extension=_text(data.get("extension")),
                recording_expected=expected,
                recording={"recording_id": recording_id} if recording_id and expected is not False else {},
                correlation_id=_text(data.get("command_id")),
                raw=data,
            )
        ]

    def _record_added_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        from calls.events import NormalisedEvent

        entry_id, recording_id = _text(data.get("entry_id")), _text(data.get("recording_id"))
        if not recording_id:
            raise WebhookInputError("recording_id is required")
        stamp = _int(data.get("timestamp"))
        when = self._when(stamp, self._offset(stamp))
        # Sent once the file is in the cloud storage and downloadable: a recording certainly exists.
        return [
            NormalisedEvent(
                provider_call_id=entry_id,
                kind="recording_ready",
                order_key=_order_key(int(when.timestamp()), 999999, "added"),
                dedupe_key=f"record-added:{recording_id}",
                timestamp=when,
                recording_expected=True,
                recording={"recording_id": recording_id},
                raw=data,
            )
        ]

    # -- events/dtmf, results, anything else --

    def _dtmf_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        from calls.events import NormalisedEvent

        leg_id = _text(data.get("call_id"))
        seq = _int(data.get("seq"), 0) or 0
        stamp = _int(data.get("timestamp"))
        when = self._when(stamp, self._offset(stamp))
        return [
            NormalisedEvent(
                provider_call_id=_text(data.get("entry_id")),
                kind="unknown",
                order_key=_order_key(int(when.timestamp()), seq, "dtmf" + _short_hash(leg_id)),
                dedupe_key=f"dtmf:{leg_id}:{seq}:{_short_hash(_text(data.get('dtmf')))}",
                timestamp=when,
                leg_id=leg_id,
                location=LOCATIONS.get(_text(data.get("location")).split(".")[0], ""),
                raw=data,
            )
        ]

    def _unknown_event(self, entry_id: str, data: dict[str, Any], action: str, key: str) -> NormalisedEvent:
        from calls.events import NormalisedEvent

        stamp = _int(data.get("timestamp"))
        when = self._when(stamp, self._offset(None)) if stamp else timezone.now()
        return NormalisedEvent(
            provider_call_id=entry_id,
            kind="unknown",
            order_key=_order_key(int(when.timestamp()), _int(data.get("seq"), 0) or 0, "other"),
            dedupe_key=key,
            timestamp=when,
            raw={"action": action, **data},
        )

    def _other_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        """Known-but-unsupported notifications (events/sms, events/record/tagged, …): answered 200 so Mango does
        not retry; stored with the call when they name one."""
        entry_id = _text(data.get("entry_id"))
        if not entry_id:
            logger.info("mango %s: %s without entry_id ignored", self.connection, action)
            return []
        digest = hashlib.sha256(compact_json(data).encode()).hexdigest()[:16]
        return [self._unknown_event(entry_id, data, action, f"other:{action}:{digest}")]

    def _result_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        """The async result of one of our commands, matched by command_id. A refused click-to-call marks its
        OriginateRequest failed; the result is stored with the call it concerns when that call is known."""
        from calls.models import CallEvent, OriginateRequest, OutboundJob

        command_id = _text(data.get("command_id"))
        code = _int(data.get("result"), 0) or 0
        if not command_id:
            logger.info("mango %s: %s without command_id (result %s)", self.connection, action, code)
            return []
        request = OriginateRequest.objects.filter(
            pbx_connection=self.connection, correlation_id=command_id
        ).first()
        if request is not None and not is_success(code):
            OriginateRequest.objects.filter(pk=request.pk).update(
                status=OriginateRequest.FAILED, error=f"Mango result {code}: {describe(code)}"
            )
            logger.warning(
                "mango %s: click-to-call %s refused: %s %s", self.connection, command_id, code, describe(code)
            )
        call = request.call if request is not None and request.call_id else None
        if call is None:
            event = (
                CallEvent.objects.filter(
                    pbx_connection=self.connection, normalised__correlation_id=command_id
                )
                .select_related("call")
                .first()
            )
            call = event.call if event is not None else None
        if call is None:
            job = (
                OutboundJob.objects.filter(
                    pbx_connection=self.connection, kind="mango.route", payload__command_id=command_id
                )
                .select_related("call")
                .first()
            )
            call = job.call if job is not None else None
        if not is_success(code) and action == "result/route":
            logger.warning(
                "mango %s: route %s refused: %s %s", self.connection, command_id, code, describe(code)
            )
        if call is None:
            logger.info(
                "mango %s: %s for unknown command %s (result %s)", self.connection, action, command_id, code
            )
            return []
        return [self._unknown_event(call.provider_call_id, data, action, f"result:{action}:{command_id}")]

    # ---- what the pipeline asks ----

    def is_final(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        """Final at the summary once the recording outcome is known: a call nobody talked in has none; an
        answered one waits for events/recording Completed, record/added, or the grace timer's verdict."""
        if not any(e.kind == "completed" for e in events):
            return False
        if call.result != "answered":
            return True
        return any(e.recording_expected is not None for e in events)

    def recording_expected(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        # Any event that saw a stored recording wins: the grace timer only stops waiting, it proves nothing.
        return any(e.recording_expected for e in events)

    def jobs_after_ingest(self, call: Call, new_events: Sequence[NormalisedEvent]) -> list[JobSpec]:

        specs: list[JobSpec] = []
        if self.settings.get("crm_routing") and not call.ended:
            ivr = next(
                (
                    e
                    for e in new_events
                    if e.kind == "ringing" and e.location == "ivr" and e.direction == "in" and e.leg_id
                ),
                None,
            )
            if ivr is not None:
                specs.append(
                    JobSpec(
                        "mango.route",
                        f"route:{call.provider_call_id}",
                        {
                            "leg_id": ivr.leg_id,
                            "caller": ivr.client_phone,
                            "did": ivr.external_phone,
                            "command_id": f"{ROUTE_PREFIX}{uuid.uuid4().hex}",
                        },
                        call=call,
                        order_key=ivr.order_key,
                    )
                )
        if call.ended and not call.final_for_crm and any(e.kind == "completed" for e in new_events):
            grace = int(self.settings.get("recording_grace_seconds") or 0)
            specs.append(
                JobSpec(
                    "mango.recording_grace",
                    f"grace:{call.provider_call_id}",
                    {"grace_seconds": grace},
                    call=call,
                    due_at=timezone.now() + dt.timedelta(seconds=grace),
                )
            )
        return specs

    # ---- outbound: signed form posts ----

    def _url(self, path: str) -> str:
        return f"{str(self.settings['api_url']).rstrip('/')}/{path}"

    def _validate(self, path: str, payload: dict[str, Any]) -> None:
        """Refuse locally what Mango would refuse: more than one bad request per 2 minutes locks the tenant's
        API out for 2 minutes (§2.2), so a bug here must not reach Mango."""

        def refuse(why: str, *, flag: bool = False) -> ProviderError:
            return ProviderError(f"{path}: not sent, {why}", permanent=True, flag_connection=flag)

        key, salt = self.secrets.get("api_key", ""), self.secrets.get("api_salt", "")
        if not key or not salt or any(ch.isspace() for ch in key + salt):
            raise refuse("the connection has no valid api_key/api_salt", flag=True)
        command_id = _text(payload.get("command_id"))
        if "command_id" in payload and not (0 < len(command_id.encode()) <= COMMAND_ID_MAX_BYTES):
            raise refuse("command_id must be 1 to 128 bytes")
        if path == "commands/callback":
            extension = _text((payload.get("from") or {}).get("extension"))
            if not extension.isdigit():
                raise refuse(f"from.extension must be an internal number, got {extension!r}")
            for name in ("to_number", "line_number"):
                value = _text(payload.get(name))
                if name in payload and not (value.isdigit() and len(value) <= 128):
                    raise refuse(f"{name} must be digits, got {value!r}")
        elif path == "commands/route":
            if not _text(payload.get("call_id")) or not _text(payload.get("to_number")).isdigit():
                raise refuse("call_id and a digit to_number are required")
            headers = payload.get("sip_headers") or {}
            if set(headers) - {"From/display-name"}:
                raise refuse("only the From/display-name SIP header may be sent with a route")
            if len(_text(headers.get("From/display-name")).encode()) > DISPLAY_NAME_MAX_BYTES:
                raise refuse("From/display-name is longer than 64 bytes")
        elif path == "queries/recording/post":
            if not _text(payload.get("recording_id")) or payload.get("action") not in {"download", "play"}:
                raise refuse("recording_id and action download|play are required")
        elif path == "stats/request":
            date_from, date_to = _int(payload.get("date_from")), _int(payload.get("date_to"))
            if date_from is None or date_to is None or not 0 < date_to - date_from <= 31 * 24 * 3600:
                raise refuse("date_from/date_to must span at most a month")
        elif path == "stats/result" and not _text(payload.get("key")):
            raise refuse("key is required")

    def _post(
        self, path: str, payload: dict[str, Any], *, allow_redirects: bool = True, timeout: Any = None
    ) -> Any:
        """Sign and send one request; returns the HTTP response. Raises ProviderError with Mango's verdict."""
        self._validate(path, payload)
        key, salt = self.secrets["api_key"], self.secrets["api_salt"]
        body = compact_json(payload)
        form = [("vpbx_api_key", key), ("sign", sign(key, body, salt)), ("json", body)]
        try:
            return http.default_client().request(
                "POST",
                self._url(path),
                data=form,
                timeout=timeout or http.DEFAULT_TIMEOUT,
                secrets=self.secret_values(),
                allow_redirects=allow_redirects,
            )
        except http.OutboundError as exc:
            if allow_redirects is False and exc.kind == "redirect" and getattr(exc, "location", ""):
                raise _Redirected(exc.location) from None
            raise self._http_failure(path, exc) from None

    def _command(self, path: str, payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """A request answered with JSON: the `result` (or older `code`) is read by class; 1000 is success."""
        response = self._post(path, payload, **kwargs)
        data = _json_or_empty(response.text)
        code = _result_code(data)
        if code is not None and not is_success(code):
            raise self._code_failure(path, code, body=response.text[:500])
        return data

    def _code_failure(
        self,
        path: str,
        code: int,
        *,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> ProviderError:
        message = f"{path}: Mango result {code} ({describe(code)})"
        if code in (4290, 4501):
            return ProviderError(message, status=status, retry_after=max(retry_after or 0, 2.0), body=body)
        if code == 5008 or 5000 <= code < 6000:
            # 5008 "service unavailable": Mango asks clients to back off (§2.2).
            return ProviderError(message, status=status, retry_after=max(retry_after or 0, 60.0), body=body)
        if path == "queries/recording/post" and code in (3300, 3320, 3340):
            # The file is written minutes after the call at peak times: not there yet is worth retrying.
            return ProviderError(message, status=status, retry_after=60.0, body=body)
        flag = code in (3102, 3105) or 2000 <= code < 3000
        return ProviderError(message, status=status, permanent=True, flag_connection=flag, body=body)

    def _http_failure(self, path: str, exc: http.OutboundError) -> ProviderError:
        """HTTP errors: the 2017 shape (420 with {"code": …}), the current one (4xx/5xx with a JSON error),
        and a 429 body without a Mango code ({"code": 0, "status": 429})."""
        data = _json_or_empty(exc.body)
        code = _result_code(data)
        if exc.status == 429:
            code = 4290
        if exc.status == 401:
            # Repeated bad requests lock the API for 2 minutes (or the key is wrong): tell the admin, retry later.
            self.connection.flag_error(
                f"{path}: Mango answered 401: wrong api_key, or the API is locked for 2 minutes after bad requests"
            )
            return ProviderError(f"{path}: HTTP 401 from Mango", status=401, retry_after=120.0, body=exc.body)
        if code is not None and code != 0:
            return self._code_failure(
                path, code, status=exc.status, body=exc.body, retry_after=exc.retry_after
            )
        if exc.status == 404 and path == "queries/recording/post":
            return ProviderError(
                f"{path}: recording not found yet", status=404, retry_after=60.0, body=exc.body
            )
        return ProviderError(
            exc.message,
            status=exc.status,
            permanent=exc.permanent,
            retry_after=max(exc.retry_after or 0, 60.0) if exc.status == 503 else exc.retry_after,
            body=exc.body,
        )

    # ---- commands ----

    def originate(self, request: OriginateRequest) -> OriginateResult:
        """commands/callback: Mango rings the employee first, then dials the client; both legs and the
        /result/callback carry our command_id, which is the correlation id."""
        from calls.models import OriginateRequest as OriginateRequestModel

        command_id = f"{CALLBACK_PREFIX}{uuid.uuid4().hex}"
        payload: dict[str, Any] = {
            "command_id": command_id,
            "from": {"extension": request.extension},
            "to_number": digits_only(request.phone),
        }
        if request.external_phone:
            payload["line_number"] = digits_only(request.external_phone)
        # Stored before sending: the result and the first legs may come back before this request returns.
        OriginateRequestModel.objects.filter(pk=request.pk).update(correlation_id=command_id)
        self._command("commands/callback", payload)
        return OriginateResult(command_id)

    def recording_link(self, recording: Recording) -> str:
        """queries/recording/post answers 302 with a temporary, single-use Location: read it, never follow
        it here (the fetch job downloads it right away)."""
        recording_id = _text((recording.hints or {}).get("recording_id"))
        if not recording_id:
            raise ProviderError("queries/recording/post: the call has no recording_id", permanent=True)
        payload = {"recording_id": recording_id, "action": "download"}
        try:
            response = self._post("queries/recording/post", payload, allow_redirects=False)
        except _Redirected as redirect:
            return redirect.location
        data = _json_or_empty(response.text)
        code = _result_code(data)
        if code is not None and not is_success(code):
            raise self._code_failure("queries/recording/post", code, body=response.text[:500])
        raise ProviderError("queries/recording/post: no download link in Mango's answer", retry_after=60.0)

    def list_extensions(self) -> list[DirectoryEntry]:
        """config/users/request: every employee with an internal number. Mango allows one such request per
        2 seconds per product, so a second click within 2 s is refused here rather than by Mango."""
        if not cache.add(f"mango:users-slot:{self.connection.tenant_id}", 1, RATE_WINDOW_SECONDS):
            raise ProviderError(
                "config/users/request: Mango allows one directory request per 2 seconds; try again",
                retry_after=RATE_WINDOW_SECONDS,
            )
        data = self._command("config/users/request", {})
        entries = []
        for user in data.get("users") or []:
            general = user.get("general") or {}
            telephony = user.get("telephony") or {}
            number = _text(telephony.get("extension"))
            if number:
                entries.append(
                    DirectoryEntry(
                        number=number, name=_text(general.get("name")), email=_text(general.get("email"))
                    )
                )
        return entries

    # ---- jobs ----

    def periodic_jobs(self, now: dt.datetime) -> list[JobSpec]:
        hours = int(self.settings.get("reconcile_hours") or 0)
        if hours <= 0:
            return []
        bucket = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
        until = bucket - RECONCILE_SETTLE
        return [
            JobSpec(
                "mango.reconcile",
                f"reconcile:{bucket:%Y%m%d%H}",
                {"date_from": int(until.timestamp()) - hours * 3600, "date_to": int(until.timestamp())},
            )
        ]

    def perform(self, job: OutboundJob) -> str:
        performers: dict[str, Callable[[OutboundJob], str]] = {
            "mango.route": self._perform_route,
            "mango.recording_grace": self._perform_grace,
            "mango.reconcile": self._perform_reconcile,
        }
        if job.kind not in performers:
            return super().perform(job)
        return performers[job.kind](job)

    def _perform_route(self, job: OutboundJob) -> str:
        """Ask the routing service whose caller this is, then move the IVR leg to that employee, with the
        caller's name on the phone. Skipped when the leg is gone or Mango's 1-per-2-s budget is used up: the
        PBX's own scheme then routes the call."""
        from calls.models import CallEvent
        from calls.routing import resolve

        call, leg_id = job.call, job.payload.get("leg_id", "")
        if call is None or call.ended:
            return "skipped: the call has ended"
        if CallEvent.objects.filter(call=call, leg_id=leg_id, kind="leg_ended").exists():
            return "skipped: the IVR leg has ended"
        caller = job.payload.get("caller", "")
        if not caller:
            return "skipped: the caller's number is unknown"
        decision = resolve(
            self.connection.tenant,
            caller,
            job.payload.get("did", ""),
            call=call,
            provider_call_id=call.provider_call_id,
            pbx_connection=self.connection,
        )
        if not decision.extension:
            return f"skipped: no responsible extension ({decision.source}); the PBX scheme routes"
        if not cache.add(f"mango:route-slot:{self.connection.tenant_id}", 1, RATE_WINDOW_SECONDS):
            logger.info(
                "mango %s: route of %s skipped, one route per 2 s", self.connection, call.provider_call_id
            )
            return "skipped: rate limit (one route per 2 s); the PBX scheme routes"
        payload: dict[str, Any] = {
            "command_id": job.payload.get("command_id") or f"{ROUTE_PREFIX}{uuid.uuid4().hex}",
            "call_id": leg_id,
            "to_number": decision.extension,
        }
        name = _truncate_bytes(decision.display_name.strip(), DISPLAY_NAME_MAX_BYTES)
        if name:
            payload["sip_headers"] = {"From/display-name": name}
        self._command("commands/route", payload)
        return f"routed to {decision.extension} ({decision.source})"

    def _perform_grace(self, job: OutboundJob) -> str:
        """No recording outcome within the grace period: say so with a recording_ready event, which makes the
        call final (is_final needs a recording verdict) without claiming a recording exists."""
        from calls.events import NormalisedEvent
        from calls.services import ingest

        call = job.call
        if call is None:
            return "skipped: no call"
        call.refresh_from_db()
        if call.final_for_crm:
            return "already final"
        now = timezone.now()
        ingest(
            self.connection,
            [
                NormalisedEvent(
                    provider_call_id=call.provider_call_id,
                    kind="recording_ready",
                    order_key=_order_key(int(now.timestamp()), 999999, "grace"),
                    dedupe_key=f"grace:{call.provider_call_id}",
                    timestamp=now,
                    recording_expected=False,
                    raw={"grace_seconds": job.payload.get("grace_seconds")},
                )
            ],
        )
        return "no recording outcome within the grace period: final"

    # ---- reconciliation ----

    def _perform_reconcile(self, job: OutboundJob) -> str:
        """Basic statistics for the last `reconcile_hours` (stats/request, then stats/result polled); calls no
        webhook completed are ingested from them, so an outage of the portal loses no calls."""
        from calls.models import Call
        from calls.services import ingest

        calls = _group_rows(self._statistics(job))
        offset = self._offset(None)
        completed = set(
            Call.objects.filter(
                pbx_connection=self.connection, provider_call_id__in=list(calls), ended=True
            ).values_list("provider_call_id", flat=True)
        )
        ingested = 0
        for entry_id, rows in calls.items():
            if entry_id in completed:
                continue
            events = self._events_from_statistics(entry_id, rows, offset)
            if events:
                ingest(self.connection, events)
                ingested += 1
        return f"{len(calls)} calls in the statistics, {ingested} completed from them"

    def _statistics(self, job: OutboundJob) -> str:
        """The CSV export. Its key survives a retry (the data stays at least a minute after it is ready)."""
        memory = f"mango:stats-key:{job.pk}"
        key = cache.get(memory)
        if key:
            waits: tuple[float, ...] = (0.0, *STATS_POLL_WAITS[1:])
        else:
            if not cache.add(f"mango:stats-slot:{self.connection.tenant_id}", 1, RATE_WINDOW_SECONDS):
                raise ProviderError(
                    "stats/request: one statistics request per 2 s", retry_after=RATE_WINDOW_SECONDS
                )
            shift = self._offset(None)
            payload = {
                "date_from": int(job.payload["date_from"]) - shift,
                "date_to": int(job.payload["date_to"]) - shift,
                "fields": ",".join(STATS_FIELDS),
                "request_id": f"reconcile-{job.pk}",
            }
            key = _text(self._command("stats/request", payload).get("key"))
            if not key:
                raise ProviderError("stats/request: Mango answered without a key", retry_after=30.0)
            cache.set(memory, key, STATS_KEY_SECONDS)
            waits = STATS_POLL_WAITS
        for wait in waits:
            # Short, bounded waits (≤ 10 s in all, at most one poll per 5 s as Mango asks); longer is the outbox's job.
            if wait:
                time.sleep(wait * django_settings.OUTBOX_TIME_SCALE)
            try:
                response = self._post("stats/result", {"key": key})
            except ProviderError as exc:
                if exc.status == 404:
                    cache.delete(memory)
                    raise ProviderError(
                        "stats/result: the export expired; asking again", retry_after=10.0
                    ) from None
                raise
            if response.status_code == 200:
                cache.delete(memory)
                return response.content.decode("utf-8", errors="replace")
        raise ProviderError("stats/result: the export is not ready yet", retry_after=10.0)

    def _events_from_statistics(
        self, entry_id: str, rows: list[dict[str, str]], offset: int
    ) -> list[NormalisedEvent]:
        """ringing, answered and completed events for one call from its statistics rows (one row per leg).
        Dedupe keys start with "stats:", which no webhook key does."""
        from calls.events import NormalisedEvent

        finished = [_int(r.get("finish"), 0) or 0 for r in rows]
        if not any(finished):
            return []  # still in progress: the webhooks or the next run will tell
        starts = [_int(r.get("create") or r.get("start"), 0) or 0 for r in rows]
        started = min((s for s in starts if s), default=max(finished))
        ended = max(finished)
        if all(r.get("from_extension") for r in rows):
            direction = "internal" if all(r.get("to_extension") for r in rows) else "out"
        else:
            direction = "in"
        answered_rows = sorted(
            (
                r
                for r in rows
                if (_int(r.get("answer"), 0) or 0) > 0 and r.get("location") not in ("ivr", "queue")
            ),
            key=lambda r: _int(r.get("answer"), 0) or 0,
        )
        if direction == "in":
            client_raw = next((r.get("from_number", "") for r in rows if not r.get("from_extension")), "")
        elif direction == "out":
            client_raw = next((r.get("to_number", "") for r in rows if not r.get("to_extension")), "")
        else:
            client_raw = ""
        records = [rec for r in rows for rec in _records(r.get("records", ""))]
        common = {
            "provider_call_id": entry_id,
            "direction": direction,
            "client_phone_raw": client_raw,
            "client_phone": self._phone(client_raw),
            "external_phone": next((self._phone(r["line_number"]) for r in rows if r.get("line_number")), ""),
        }
        initiator = rows[0].get("from_extension", "") if direction == "out" else ""
        start_when = self._when(started, offset)
        events = [
            NormalisedEvent(
                kind="ringing",
                order_key=_order_key(int(start_when.timestamp()), 0, "stats"),
                dedupe_key=f"stats:{entry_id}:start",
                timestamp=start_when,
                extension=initiator,
                raw={"derived_from": "stats"},
                **common,
            )
        ]
        if direction == "in":
            # Every employee leg rang: gives the call its rang extensions (and their cards a cancel).
            for index, row in enumerate(rows):
                who = row.get("to_extension", "")
                if not who or row.get("location") in ("ivr", "queue"):
                    continue
                when = self._when(_int(row.get("start")) or started, offset)
                events.append(
                    NormalisedEvent(
                        kind="ringing",
                        order_key=_order_key(int(when.timestamp()), 1, f"stats{index:03d}"),
                        dedupe_key=f"stats:{entry_id}:ring:{index}",
                        timestamp=when,
                        location="agent",
                        extension=who,
                        extensions=(who,),
                        raw={"derived_from": "stats"},
                        **common,
                    )
                )
        for index, row in enumerate(answered_rows):
            who = row.get("from_extension", "") if direction == "out" else row.get("to_extension", "")
            when = self._when(_int(row.get("answer")), offset)
            events.append(
                NormalisedEvent(
                    kind="answered",
                    order_key=_order_key(int(when.timestamp()), 999998, f"stats{index:03d}"),
                    dedupe_key=f"stats:{entry_id}:answer:{index}",
                    timestamp=when,
                    location="agent",
                    extension=who,
                    extensions=(who,) if who else (),
                    raw={"derived_from": "stats", **row},
                    **common,
                )
            )
        answered = bool(answered_rows)
        first_answer = _int(answered_rows[0].get("answer"), 0) if answered else 0
        reason = _int(rows[-1].get("disconnect_reason"))
        end_when = self._when(ended, offset)
        events.append(
            NormalisedEvent(
                kind="completed",
                order_key=_order_key(int(end_when.timestamp()), 999999, "stats"),
                dedupe_key=f"stats:{entry_id}:end",
                timestamp=end_when,
                outcome="answered" if answered else _unanswered_outcome(direction, reason),
                talk_seconds=max(0, ended - (first_answer or ended)) if answered else 0,
                duration_seconds=max(0, ended - started),
                disconnect_reason=_text(rows[-1].get("disconnect_reason")),
                recording_expected=bool(records) and answered,
                recording={"recording_id": records[0]} if records and answered else {},
                raw={"_note": "completed from Mango statistics: no summary webhook arrived", "rows": rows},
                **common,
            )
        )
        return events


class _Redirected(Exception):
    """queries/recording/post answered with the redirect we wanted."""

    def __init__(self, location: str) -> None:
        super().__init__("redirected")
        self.location = location


def _json_or_empty(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text or "")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _result_code(data: dict[str, Any]) -> int | None:
    """`result` in a 200 body (and in /result/*), `code` in the 2017 HTTP 420 body and the newer error bodies."""
    for name in ("result", "code"):
        if name in data:
            code = _int(data.get(name))
            if code is not None:
                return code
    return None


def _records(value: str) -> list[str]:
    """The `records` column looks like "[rec1,rec2]" (or empty)."""
    inner = (value or "").strip().strip("[]")
    return [part.strip() for part in inner.split(",") if part.strip()]


def _group_rows(text: str) -> dict[str, list[dict[str, str]]]:
    """The CSV export (';' separated, no quoting, columns in the order we asked), rows grouped by entry_id."""
    calls: dict[str, list[dict[str, str]]] = {}
    reader = csv.reader(io.StringIO(text), delimiter=";", quoting=csv.QUOTE_NONE)
    for cells in reader:
        if not cells or not any(c.strip() for c in cells):
            continue
        if cells[0].strip() == STATS_FIELDS[0]:
            continue  # a header row, should Mango add one
        row = {name: (cells[i].strip() if i < len(cells) else "") for i, name in enumerate(STATS_FIELDS)}
        if row["entry_id"]:
            calls.setdefault(row["entry_id"], []).append(row)
    return calls
