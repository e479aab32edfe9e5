"""The call's outcome: after `end` a `call_info` job asks the PBX how the call went (answered or why not, talk
time, answering PIN) and ingests it as the call's final `completed` event; when call_info keeps failing the
call completes from its events alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from integrations.providers.base import ProviderError, ReconcileResult
from integrations.providers.rostelecom.api import RostelecomError
from integrations.providers.rostelecom.wire import RANK_CALL_INFO, RANKS, as_int, is_true, order_key, pin_of

if TYPE_CHECKING:
    from calls.events import NormalisedEvent
    from calls.models import Call, OutboundJob


CALL_INFO = "rostelecom.call_info"
# An attempt this close to the end of the job's window is treated as the last one (see _is_last_attempt).
LAST_ATTEMPT_MARGIN = dt.timedelta(seconds=5)
CALL_INFO_DIRECTIONS = {1: "in", 2: "out", 3: "internal"}
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


class RostelecomCallInfo:
    """The call_info job of RostelecomProvider and the events it produces."""

    def perform(self, job: OutboundJob) -> str:
        if job.kind != CALL_INFO:
            raise ProviderError(f"rostelecom has no job kind {job.kind!r}", permanent=True)
        from calls import outbox
        from calls.processor import ingest

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
                with outbox.on_behalf_of(job):
                    ingest(self.connection, [self.completed_without_call_info(call, exc)])
            raise
        events = self.call_info_events(call, info, answer)
        with outbox.on_behalf_of(job):  # fenced: a worker that lost its lease writes nothing
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

    def reconcile(self, call: Call) -> ReconcileResult:
        """A call whose `end` never came: call_info completes it. A refusal (the PBX does not know the session)
        closes it as unknown; details without an outcome yet (neither `state` nor `duration`, our reading of a
        call still in progress) mean "ask again later". Transport errors raise: the outbox retries."""
        from calls.services import stored_events

        try:
            answer = self.post("call_info", {"session_id": call.provider_call_id})
        except RostelecomError as exc:
            return ReconcileResult("unknown", note=f"closed as unknown: Rostelecom call_info refused ({exc})")
        info = answer.get("info")
        if not isinstance(info, dict) or not info:
            return ReconcileResult("unknown", note="closed as unknown: Rostelecom call_info has no such call")
        duration = as_int(info.get("duration"))
        if as_int(info.get("state")) is None and duration is None:
            return ReconcileResult("live", note="call_info has no outcome yet")
        # No `end` time: the last event, or the answer plus the talk time call_info reports.
        last = max((e.timestamp for e in stored_events(call)), default=call.started_at or timezone.now())
        ended = call.answered_at + dt.timedelta(seconds=duration) if call.answered_at and duration else last
        events = self.call_info_events(call, info, answer, ended=max(ended, last))
        note = "completed by reconciliation from call_info: no end event arrived"
        events[-1] = replace(events[-1], raw={**answer, "_note": note})
        return ReconcileResult("completed", tuple(events), note=note)

    def call_info_events(
        self, call: Call, info: dict[str, Any], answer: dict[str, Any], ended: dt.datetime | None = None
    ) -> list[NormalisedEvent]:
        """The completed event carrying call_info's outcome (and an `answered` when the events lost it)."""
        from calls.events import NormalisedEvent

        sid = call.provider_call_id
        ended = ended or self._end_moment(call)
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
