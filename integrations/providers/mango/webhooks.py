"""What Mango sends us: signed form posts to `events/call`, `events/summary`, `events/recording`,
`events/record/added`, `events/dtmf`, `result/<command>` and the cabinet's `ping`, turned into normalised
events. Call model: `entry_id` is the Call, `call_id` one leg.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from django.utils import timezone
from rest_framework.response import Response

from integrations.providers.base import WebhookAuthError, WebhookInputError, inbound_action, secrets_equal
from integrations.providers.mango.wire import (
    CALL_STATES,
    CALLBACK_PREFIX,
    CLOUD_RECIPIENTS,
    DIRECTIONS,
    LOCATIONS,
    _int,
    _order_key,
    _short_hash,
    _text,
    _unanswered_outcome,
    compact_json,
    describe,
    is_success,
    sign,
)

if TYPE_CHECKING:
    from django.http import HttpRequest
    from rest_framework.request import Request

    from calls.events import NormalisedEvent

logger = logging.getLogger("callbridge.mango")


class MangoWebhooks:
    """Inbound half of MangoProvider: authentication and one parser per notification."""

    @staticmethod
    def _action(action: str) -> str:
        # A base URL pasted with a trailing slash makes Mango post to ".../<id>//events/call".
        return inbound_action(action)

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
            self.store_events(events)
        return Response({"result": 1000})

    def _clock(self, reference: int | None) -> tuple[int, dict[str, Any]]:
        """The offset a webhook applies to Mango's epoch values, and the `settle` hint for the processor: with
        `timestamp_offset: auto` the offset is found by comparing with the receipt time and remembered in the
        cache, which the webhook does not touch, so the event is stored unshifted and settle_event() shifts
        it when it is applied."""
        fixed = self._fixed_offset()
        if fixed is not None:
            return fixed, {}
        return 0, {"clock": reference or 0}

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

    def _call_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        from calls.events import NormalisedEvent

        entry_id, leg_id = _text(data.get("entry_id")), _text(data.get("call_id"))
        state = _text(data.get("call_state"))
        if not leg_id or not state:
            raise WebhookInputError("call_id and call_state are required")
        seq = _int(data.get("seq"), 0) or 0
        stamp = _int(data.get("timestamp"))
        offset, settle = self._clock(stamp)
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
                settle=settle if stamp else {},
                raw=data,
            )
        ]

    def _summary_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        """The final word on the call, plus its start and answer, so a call whose leg notifications were lost
        still has its times and its employee. Derived events have their own dedupe keys."""
        from calls.events import NormalisedEvent

        entry_id = _text(data.get("entry_id"))
        party_from = data.get("from") if isinstance(data.get("from"), dict) else {}
        party_to = data.get("to") if isinstance(data.get("to"), dict) else {}
        created, talked, ended = (_int(data.get(f)) for f in ("create_time", "talk_time", "end_time"))
        offset, settle = self._clock(ended)
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
            "settle": settle if ended else {},
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
            # For an incoming call to.extension may name a group; only a known employee counts as who answered,
            # which the processor checks (settle_event: the webhook does not read the directory).
            check = {"answerer": who} if direction == "in" and who else {}
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
                    **{**common, "settle": {**common["settle"], **check}},
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

    def _recording_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        from calls.events import NormalisedEvent

        entry_id, recording_id = _text(data.get("entry_id")), _text(data.get("recording_id"))
        state = _text(data.get("recording_state"))
        seq = _int(data.get("seq"), 0) or 0
        stamp = _int(data.get("timestamp"))
        offset, settle = self._clock(stamp)
        when = self._when(stamp, offset)
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
                settle=settle if stamp else {},
                raw=data,
            )
        ]

    def _record_added_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        from calls.events import NormalisedEvent

        entry_id, recording_id = _text(data.get("entry_id")), _text(data.get("recording_id"))
        if not recording_id:
            raise WebhookInputError("recording_id is required")
        stamp = _int(data.get("timestamp"))
        offset, settle = self._clock(stamp)
        when = self._when(stamp, offset)
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
                settle=settle if stamp else {},
                raw=data,
            )
        ]

    def _dtmf_events(self, data: dict[str, Any], action: str) -> list[NormalisedEvent]:
        from calls.events import NormalisedEvent

        leg_id = _text(data.get("call_id"))
        seq = _int(data.get("seq"), 0) or 0
        stamp = _int(data.get("timestamp"))
        offset, settle = self._clock(stamp)
        when = self._when(stamp, offset)
        return [
            NormalisedEvent(
                provider_call_id=_text(data.get("entry_id")),
                kind="unknown",
                order_key=_order_key(int(when.timestamp()), seq, "dtmf" + _short_hash(leg_id)),
                dedupe_key=f"dtmf:{leg_id}:{seq}:{_short_hash(_text(data.get('dtmf')))}",
                timestamp=when,
                leg_id=leg_id,
                location=LOCATIONS.get(_text(data.get("location")).split(".")[0], ""),
                settle=settle if stamp else {},
                raw=data,
            )
        ]

    def _unknown_event(self, entry_id: str, data: dict[str, Any], action: str, key: str) -> NormalisedEvent:
        from calls.events import NormalisedEvent

        stamp = _int(data.get("timestamp"))
        offset, settle = self._clock(None)
        when = self._when(stamp, offset) if stamp else timezone.now()
        return NormalisedEvent(
            provider_call_id=entry_id,
            kind="unknown",
            order_key=_order_key(int(when.timestamp()), _int(data.get("seq"), 0) or 0, "other"),
            dedupe_key=key,
            timestamp=when,
            settle=settle if stamp else {},
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
        request = (
            OriginateRequest.objects.select_related("call")
            .filter(pbx_connection=self.connection, correlation_id=command_id)
            .first()
        )
        if request is not None and not is_success(code):
            OriginateRequest.objects.filter(pk=request.pk).update(
                status=OriginateRequest.FAILED, error=f"Mango result {code}: {describe(code)}"
            )
            logger.warning(
                "mango %s: click-to-call %s refused: %s %s", self.connection, command_id, code, describe(code)
            )
        # The call's id is enough: the event names its call by the PBX's id (it may not be applied yet).
        provider_call_id = request.call.provider_call_id if request is not None and request.call_id else ""
        if not provider_call_id:
            provider_call_id = (
                CallEvent.objects.filter(
                    pbx_connection=self.connection, normalised__correlation_id=command_id
                )
                .values_list("provider_call_id", flat=True)
                .first()
            ) or ""
        if not provider_call_id:
            job = (
                OutboundJob.objects.filter(
                    pbx_connection=self.connection, kind="mango.route", payload__command_id=command_id
                )
                .select_related("call")
                .first()
            )
            provider_call_id = job.call.provider_call_id if job is not None and job.call_id else ""
        if not is_success(code) and action == "result/route":
            logger.warning(
                "mango %s: route %s refused: %s %s", self.connection, command_id, code, describe(code)
            )
        if not provider_call_id:
            logger.info(
                "mango %s: %s for unknown command %s (result %s)", self.connection, action, command_id, code
            )
            return []
        return [self._unknown_event(provider_call_id, data, action, f"result:{action}:{command_id}")]
