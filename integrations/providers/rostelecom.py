"""Rostelecom virtual PBX ("Виртуальная АТС Ростелекома") integration API.

Wire facts (shared/protocols/pbx.md §1): every request, in both directions, is a JSON POST carrying `X-Client-ID`
and `X-Client-Sign` = lower-case hex sha256(client_id + body + sign_key) over the exact bytes. The PBX posts
`call_events` (new / connected / disconnected / end, no sequence number, no duration) and asks
`get_number_info` synchronously before routing an incoming call; we call `call_info` after `end` for the
outcome, `call_back` for click-to-call, `get_record` for a temporary recording link and `users_info` for the
directory. Decisions on the digest's open questions are in docs/providers/rostelecom.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import logging
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from rest_framework.parsers import JSONParser
from rest_framework.renderers import BaseRenderer
from rest_framework.response import Response

from integrations import http
from integrations.phones import is_extension, to_e164_or_none
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

logger = logging.getLogger("callbridge.rostelecom")

CALL_INFO = "rostelecom.call_info"
# Outbound timeouts (connect, read). Public clients wait 10–15 s; click-to-call runs inside a CRM's request,
# so it gets a shorter read timeout.
TIMEOUT = (3.05, 10)
CALL_BACK_TIMEOUT = (3.05, 8)
# An attempt this close to the end of the job's window is treated as the last one (see _is_last_attempt).
LAST_ATTEMPT_MARGIN = dt.timedelta(seconds=5)

AUTH_FAILURE_MESSAGE = "Invalid signature"
MAX_SESSION_ID = 200  # Call.provider_call_id

DIRECTIONS = {"incoming": "in", "outbound": "out", "internal": "internal"}
CALL_INFO_DIRECTIONS = {1: "in", 2: "out", 3: "internal"}
KINDS = {"new": "ringing", "connected": "answered", "disconnected": "leg_ended", "end": "completed"}
# Order of states sharing one millisecond: new < connected < disconnected < end < call_info.
RANKS = {"new": 0, "connected": 2, "disconnected": 3, "end": 4}
RANK_UNKNOWN = 1
RANK_CALL_INFO = 5
# disconnect_reason codes one shipped CRM maps ([SM] in pbx.md §1.3.1); the guide's own example is free text.
BUSY_REASON = "3"
# call_info.status_code for an unanswered call. The seed's value is cut off; these are SIP response codes,
# which is our assumption (docs/providers/rostelecom.md); anything else falls back to the direction's default.
UNANSWERED_BY_STATUS = {
    "486": "busy",
    "600": "busy",
    "603": "busy",
    "480": "not_available",
    "404": "not_available",
    "410": "not_available",
    "484": "not_available",
    "604": "not_available",
    "403": "not_allowed",
    "408": "no_answer",
    "487": "cancelled",
}


# ---------------------------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------------------------


def signature(client_id: str, body: bytes, sign_key: str) -> str:
    """X-Client-Sign: lower-case hex SHA-256 of client_id + body + sign_key, over the exact body bytes."""
    return hashlib.sha256(client_id.encode() + body + sign_key.encode()).hexdigest()


def dump_json(data: Any) -> bytes:
    """The bytes we send and sign: ASCII-only JSON, so the signed string is the same under any encoding."""
    return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class RostelecomJSONRenderer(BaseRenderer):
    """Renders exactly what `dump_json` signs, so our answers can carry a valid X-Client-Sign."""

    media_type = "application/json"
    format = "json"
    charset = None

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        return b"" if data is None else dump_json(data)


# ---------------------------------------------------------------------------------------------------------
# Numbers, times and results
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """One side of a call as the PBX wrote it: a phone number, a PIN (extension) or a SIP login."""

    raw: str
    phone: str = ""  # E.164
    extension: str = ""
    login: str = ""


def parse_party(value: Any, region: str = "RU") -> Party:
    """`sip:+74951234567@host`, `sip:79771234567@dom`, `sip:101@dom`, `user@dom`, `sip:admin@1.2.3.4`,
    `74959561111`, `84959561111`, `+7…`: strip the scheme, cut at the first `@`; digits are a PIN when short,
    a phone number otherwise; anything else is a SIP login."""
    raw = "" if value is None else str(value).strip()
    text = raw
    for scheme in ("sips:", "sip:", "tel:"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
            break
    user = text.split("@", 1)[0].strip()
    if not user:
        return Party(raw)
    digits = user[1:] if user.startswith("+") else user
    if digits.isdigit():
        if is_extension(user):
            return Party(raw, extension=user)
        return Party(raw, phone=to_e164_or_none(user, region) or "")
    return Party(raw, login=user)


def pin_of(value: Any) -> str:
    text = "" if value is None else str(value).strip()
    return text if is_extension(text) else ""


def parse_timestamp(value: Any, zone: dt.tzinfo) -> dt.datetime | None:
    """`2019-12-27 15:34:44.461`: wall time in the connection's time zone (the value carries none). Unix
    seconds (or milliseconds) are accepted too: `call_info.start_call_date` has been seen in both forms."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    if text.isdigit():
        number = int(text)
        return dt.datetime.fromtimestamp(number / 1000 if number > 10**11 else number, tz=dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def order_key(moment: dt.datetime, rank: int) -> str:
    """Fixed width, sortable: UTC time to the microsecond, then the state's rank within that instant."""
    return f"{moment.astimezone(dt.UTC):%Y%m%d%H%M%S%f}:{rank}"


def result_is_zero(value: Any) -> bool:
    """`result` arrives as 0 or "0" on success; anything else (including a missing result) is a failure."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == 0
    return isinstance(value, str) and value.strip() == "0"


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def is_true(value: Any) -> bool:
    """`is_record` is the string "true" in call_events and a boolean in call_info."""
    if isinstance(value, bool):
        return value
    return str(value or "").strip().lower() in {"true", "1"}


def talk_seconds_from_log(session_log: Any) -> int | None:
    """Sum of connected→disconnected spans in `session_log` ("0:el:…;9:cc:admin;14:cd:admin;"). The codes are
    undocumented: cc/cd read as connected/disconnected is our guess, so None when the log does not fit it."""
    if not isinstance(session_log, str):
        return None
    total, opened, seen = 0, None, False
    for entry in session_log.split(";"):
        parts = entry.split(":")
        if len(parts) < 2 or not parts[0].strip().isdigit():
            continue
        offset, code = int(parts[0]), parts[1].strip()
        if code == "cc" and opened is None:
            opened = offset
        elif code == "cd" and opened is not None:
            total += max(0, offset - opened)
            opened, seen = None, True
    return total if seen else None


def unanswered_outcome(direction: str, status_code: Any = "", disconnect_reasons: Sequence[str] = ()) -> str:
    """Our result for a call nobody answered: busy/unavailable when the PBX says why, else by direction."""
    by_status = UNANSWERED_BY_STATUS.get(str(status_code or "").strip())
    if by_status and not (direction == "in" and by_status == "cancelled"):
        return by_status
    if BUSY_REASON in disconnect_reasons:
        return "busy"
    return "no_answer" if direction == "out" else "missed"


class RostelecomError(ProviderError):
    """The PBX answered with a non-zero `result`; the message carries the PBX's own words."""


# ---------------------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------------------


class RostelecomProvider(PbxProvider):
    key = "rostelecom"
    settings_fields = (
        Field("api_url", "url", default="https://api.cloudpbx.rt.ru"),
        Field("domain", "str", default=""),
        Field("routing_budget_ms", "int", default=800, minimum=100, maximum=10000),
        Field("time_zone", "str", default="Europe/Moscow"),
        Field("record_ip", "str", default=""),
    )
    secret_fields = (Field("client_id", "secret"), Field("sign_key", "secret"))
    inbound_paths = ("call_events", "get_number_info")
    auth_failure_status = 403
    # About three attempts within two minutes (outbox schedule 10 s, 30 s, 60 s); then the call completes from
    # its events alone.
    job_kinds = {CALL_INFO: JobKind(window=dt.timedelta(minutes=2), ordered=False)}

    # ---- configuration ----
    @classmethod
    def clean_settings(cls, data: dict[str, Any] | None) -> dict[str, Any]:
        cleaned = super().clean_settings(data)
        try:
            zoneinfo.ZoneInfo(cleaned.get("time_zone") or "Europe/Moscow")
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise SchemaError(
                "settings.time_zone", f"unknown time zone {cleaned.get('time_zone')!r}"
            ) from None
        if cleaned.get("record_ip"):
            try:
                ipaddress.ip_address(cleaned["record_ip"])
            except ValueError:
                raise SchemaError(
                    "settings.record_ip", f"must be an IP address, got {cleaned['record_ip']!r}"
                ) from None
        return cleaned

    @property
    def zone(self) -> dt.tzinfo:
        try:
            return zoneinfo.ZoneInfo(self.settings.get("time_zone") or "Europe/Moscow")
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            logger.warning("rostelecom %s: bad time_zone setting; using Europe/Moscow", self.connection)
            return zoneinfo.ZoneInfo("Europe/Moscow")

    @property
    def region(self) -> str:
        return self.connection.tenant.region or "RU"

    def _credentials(self) -> tuple[str, str]:
        return str(self.secrets.get("client_id") or ""), str(self.secrets.get("sign_key") or "")

    def signed_headers(self, body: bytes) -> dict[str, str]:
        client_id, sign_key = self._credentials()
        return {"X-Client-ID": client_id, "X-Client-Sign": signature(client_id, body, sign_key)}

    # ---- inbound ----
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

    def parser_classes(self, action: str) -> list[type]:
        return [JSONParser]  # the body is read raw (request.body); this only keeps DRF from refusing it

    def renderer_classes(self, action: str) -> list[type]:
        return [RostelecomJSONRenderer]

    def handle(self, request: Request, action: str) -> Response:
        handlers = {"call_events": self.handle_call_events, "get_number_info": self.handle_get_number_info}
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
        from calls.services import ingest

        body = self.read_body(request)
        event = self.to_event(body)
        ingest(self.connection, [event])
        return self.answer({"result": 0, "resultMessage": "ok"})

    def handle_get_number_info(self, request: Request) -> Response:
        """Whose caller is this: answered within routing_budget_ms, always `result: 0`; without a PIN the PBX
        routes by its own rules. Accepts the guide's body (domain, from_number, request_number) and the seed's
        call_events-shaped one (session_id, timestamp, type, state, …)."""
        body = self.read_body(request)
        caller = parse_party(body.get("from_number"), self.region).phone
        if not caller:
            return self.answer({"result": 0, "resultMessage": "Caller unknown"})
        did = parse_party(body.get("request_number"), self.region).phone
        session_id = str(body.get("session_id") or "").strip()
        try:
            decision = self.resolve_caller(caller, did, session_id)
        except Exception:  # never a 5xx: without our answer the PBX waits out its timeout
            logger.exception("rostelecom %s: routing failed", self.connection.public_id)
            return self.answer({"result": 0, "resultMessage": "Caller unknown"})
        known = bool(decision.extension or decision.display_name)
        data: dict[str, Any] = {"result": 0, "resultMessage": "Caller found" if known else "Caller unknown"}
        if decision.display_name:
            data["displayName"] = decision.display_name
        if decision.extension:
            data["PIN"] = decision.extension
        return self.answer(data)

    def resolve_caller(self, caller: str, did: str, session_id: str) -> Any:
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
            deadline_ms=int(self.settings.get("routing_budget_ms") or 800),
            pbx_connection=self.connection,
        )

    # ---- call_events → normalised events ----
    def to_event(self, body: dict[str, Any]) -> NormalisedEvent:
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
            raw=body,
        )

    # ---- pipeline hooks ----
    def is_final(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        """`end` plus call_info's outcome; or, when call_info gave up, `end` alone. Internal calls reach no CRM,
        so they are final at `end` without asking call_info."""
        from calls.models import OutboundJob

        if any(e.kind == "completed" and e.final for e in events):
            return True
        if not any(e.kind == "completed" for e in events):
            return False
        if call.direction == "internal":
            return True
        return OutboundJob.objects.filter(
            call=call, kind=CALL_INFO, status__in=[OutboundJob.DEAD, OutboundJob.FAILED]
        ).exists()

    def recording_expected(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        """`end` said is_record "true" or call_info said is_record: the switch is on (the pipeline adds "and
        the call was answered"); a later False does not take back an earlier True."""
        return any(e.recording_expected is True for e in events)

    def jobs_after_ingest(self, call: Call, new_events: Sequence[NormalisedEvent]) -> list[JobSpec]:
        ends = [e for e in new_events if e.kind == "completed" and not e.final]
        if not ends or call.direction == "internal":
            return []
        return [
            JobSpec(
                CALL_INFO,
                f"call_info:{call.provider_call_id}",
                {"session_id": call.provider_call_id},
                call=call,
                order_key=ends[0].order_key,
            )
        ]

    # ---- outbound ----
    def post(self, method: str, payload: dict[str, Any], timeout: Any = TIMEOUT) -> dict[str, Any]:
        """One signed POST to `{api_url}/{method}`; returns the answer when its `result` is 0."""
        client_id, sign_key = self._credentials()
        if not client_id or not sign_key:
            raise ProviderError(
                "The Rostelecom connection has no client_id or sign_key", permanent=True, flag_connection=True
            )
        domain = str(self.settings.get("domain") or "").strip()
        if domain and "domain" not in payload:
            payload = {**payload, "domain": domain}
        body = dump_json(payload)
        url = f"{str(self.settings['api_url']).rstrip('/')}/{method}"
        response = http.request(
            "POST",
            url,
            data=body,
            headers={"Content-Type": "application/json", **self.signed_headers(body)},
            timeout=timeout,
            secrets=self.secret_values(),
        )
        try:
            answer = response.json()
        except ValueError:
            raise ProviderError(
                f"Rostelecom {method}: the answer is not JSON",
                status=response.status_code,
                body=response.text[:500],
            ) from None
        if not isinstance(answer, dict):
            raise ProviderError(f"Rostelecom {method}: unexpected answer", body=response.text[:500])
        if not result_is_zero(answer.get("result")):
            message = str(answer.get("resultMessage") or "no message").strip()
            raise RostelecomError(
                f"Rostelecom {method} refused: {message} (result {answer.get('result')!r})",
                body=response.text[:500],
            )
        return answer

    def originate(self, request: OriginateRequest) -> OriginateResult:
        """call_back: the PBX rings the employee's PIN, then dials the client; its session_id names the call."""
        try:
            answer = self.post(
                "call_back",
                {"from_pin": request.extension, "request_number": request.phone},
                CALL_BACK_TIMEOUT,
            )
        except RostelecomError as exc:
            raise RostelecomError(str(exc), permanent=True, body=exc.body) from None
        return OriginateResult(str(answer.get("session_id") or ""))

    def recording_link(self, recording: Recording) -> str:
        """get_record: a temporary link, bound to `ip_adress` (sic) when record_ip is set."""
        session_id = str((recording.hints or {}).get("session_id") or recording.call.provider_call_id)
        payload: dict[str, Any] = {"session_id": session_id}
        if self.settings.get("record_ip"):
            payload["ip_adress"] = self.settings["record_ip"]
        answer = self.post("get_record", payload)  # a non-zero result is retried: the file may not be ready
        url = str(answer.get("url") or "").strip()
        if not url:
            raise ProviderError("Rostelecom get_record: the answer has no url")
        return url

    def list_extensions(self) -> list[DirectoryEntry]:
        """users_info: the domain's users (groups are not extensions anyone works at)."""
        try:
            answer = self.post("users_info", {})
        except RostelecomError as exc:
            raise RostelecomError(str(exc), permanent=True, body=exc.body) from None
        entries = []
        for user in answer.get("users") or []:
            if not isinstance(user, dict):
                continue
            number = pin_of(user.get("pin"))
            if not number:
                continue
            name = str(user.get("display_name") or user.get("name") or "").strip()
            entries.append(
                DirectoryEntry(number=number, name=name, email=str(user.get("email") or "").strip())
            )
        return entries

    # ---- call_info job ----
    def perform(self, job: OutboundJob) -> str:
        if job.kind != CALL_INFO:
            raise ProviderError(f"rostelecom has no job kind {job.kind!r}", permanent=True)
        from calls.services import ingest

        call = job.call
        if call is None:
            raise ProviderError("call_info job without a call", permanent=True)
        session_id = str(job.payload.get("session_id") or call.provider_call_id)
        try:
            answer = self.post("call_info", {"session_id": session_id})
            info = answer.get("info")
            if not isinstance(info, dict):
                raise ProviderError("Rostelecom call_info: the answer has no info")
        except Exception as exc:
            if self._is_last_attempt(job, exc):
                ingest(self.connection, [self.completed_without_call_info(call, exc)])
            raise
        events = self.call_info_events(call, info, answer)
        ingest(self.connection, events)
        completed = events[-1]
        return (
            f"call_info: {completed.outcome or 'outcome unknown'}, duration {completed.duration_seconds}, "
            f"answering PIN {completed.extension or '-'}"
        )

    @staticmethod
    def _is_last_attempt(job: OutboundJob, exc: Exception) -> bool:
        """Whether the outbox will give up after this failure: permanent, or the next retry falls outside the
        window (the same computation as calls.outbox.record_result, with a margin so we never miss it)."""
        from calls import outbox

        if getattr(exc, "permanent", False):
            return True
        if not job.window_ends_at:
            return False
        next_at = timezone.now() + outbox.next_delay(job.attempts + 1, getattr(exc, "retry_after", None))
        return next_at + LAST_ATTEMPT_MARGIN > job.window_ends_at

    def _end_moment(self, call: Call) -> dt.datetime:
        return call.ended_at or timezone.now()

    def call_info_events(
        self, call: Call, info: dict[str, Any], answer: dict[str, Any]
    ) -> list[NormalisedEvent]:
        """The completed event carrying call_info's outcome (and an `answered` when the events lost it)."""
        from calls.events import NormalisedEvent

        sid = call.provider_call_id
        ended = self._end_moment(call)
        direction = CALL_INFO_DIRECTIONS.get(as_int(info.get("direction")) or 0, "")
        state = as_int(info.get("state"))
        duration = as_int(info.get("duration"))
        answering_pin = pin_of(info.get("answering_pin"))
        talk = talk_seconds_from_log(info.get("session_log"))
        answered = state == 1 or (state is None and bool(duration))
        if state is None and duration is None:
            outcome = ""
        elif answered:
            outcome = "answered"
        else:
            outcome = unanswered_outcome(
                direction or call.direction, info.get("status_code"), _disconnect_reasons(call)
            )
            talk = 0
        events: list[NormalisedEvent] = []
        if answered and answering_pin and not call.answered_extensions:
            # The connected events were lost: the PBX's first answering PIN still belongs on the call.
            cc_offset = _first_offset(info.get("session_log"), "cc")
            at = ended
            if call.started_at and cc_offset is not None:
                at = call.started_at + dt.timedelta(seconds=cc_offset)
            events.append(
                NormalisedEvent(
                    provider_call_id=sid,
                    kind="answered",
                    order_key=order_key(min(at, ended), RANKS["connected"]),
                    dedupe_key=f"{sid}:call_info:answered",
                    timestamp=min(at, ended),
                    direction=direction,
                    extension=answering_pin,
                    extensions=(answering_pin,),
                    correlation_id=sid,
                    raw={"_from": "call_info", "answering_pin": answering_pin},
                )
            )
        events.append(
            NormalisedEvent(
                provider_call_id=sid,
                kind="completed",
                order_key=order_key(ended, RANK_CALL_INFO),
                dedupe_key=f"{sid}:call_info",
                timestamp=ended,
                direction=direction,
                extension=answering_pin,
                extensions=(answering_pin,) if answering_pin else (),
                outcome=outcome,
                talk_seconds=talk,
                duration_seconds=duration,
                recording_expected=is_true(info.get("is_record")),
                recording={"session_id": sid},
                correlation_id=sid,
                final=True,
                raw=answer,
            )
        )
        return events

    def completed_without_call_info(self, call: Call, exc: Exception) -> NormalisedEvent:
        """call_info kept failing: the call completes from its events alone, and the note says so."""
        from calls.events import NormalisedEvent
        from calls.services import stored_events

        sid = call.provider_call_id
        ended = self._end_moment(call)
        events = stored_events(call)
        outcome = ""
        unanswered = not call.answered_extensions and not call.answered_at
        if unanswered and BUSY_REASON in [e.disconnect_reason for e in events]:
            outcome = "busy"
        error = str(exc)[:200] or exc.__class__.__name__
        return NormalisedEvent(
            provider_call_id=sid,
            kind="completed",
            order_key=order_key(ended, RANK_CALL_INFO),
            dedupe_key=f"{sid}:call_info:unavailable",
            timestamp=ended,
            outcome=outcome,
            talk_seconds=talk_seconds_from_events(events),
            recording={"session_id": sid},
            correlation_id=sid,
            final=True,
            raw={"_note": f"completed from events: call_info unavailable ({error})"},
        )


def talk_seconds_from_events(events: Sequence[NormalisedEvent]) -> int | None:
    """Sum of connected → disconnected spans (a transfer has several); None when the events have no such pair,
    so the pipeline falls back to answered → end."""
    total, opened, seen = 0.0, None, False
    for event in sorted(events, key=lambda e: e.order_key):
        if event.kind == "answered" and opened is None:
            opened = event.timestamp
        elif event.kind == "leg_ended" and opened is not None:
            total += max(0.0, (event.timestamp - opened).total_seconds())
            opened, seen = None, True
    return int(total) if seen else None


def _first_offset(session_log: Any, code: str) -> int | None:
    if not isinstance(session_log, str):
        return None
    for entry in session_log.split(";"):
        parts = entry.split(":")
        if len(parts) >= 2 and parts[0].strip().isdigit() and parts[1].strip() == code:
            return int(parts[0])
    return None


def _disconnect_reasons(call: Call) -> list[str]:
    from calls.services import stored_events

    return [e.disconnect_reason for e in stored_events(call) if e.disconnect_reason]
