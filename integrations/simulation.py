"""Scenario timelines for simulated calls (`manage.py simulate_call`, the sandbox PBX).

A scenario is provider-neutral: when the routing question is asked, which extensions ring, who answers, who hangs
up, how the call ends and whether a recording follows, each at an offset in seconds from the call's start. Each
PBX provider's `simulate()` renders one timeline into its own signed inbound requests, so the scenarios are
written once and every PBX adapter plays the same calls (that is what makes them its contract test).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from integrations.phones import is_extension

SCENARIOS: tuple[str, ...] = (
    "answered",
    "missed",
    "busy",
    "transfer",
    "ring-group",
    "click-to-call",
    "recording",
)
DESCRIPTIONS: dict[str, str] = {
    "answered": "incoming call, routed, answered by the extension, talks, hangs up; recorded",
    "missed": "incoming call rings the extension; the caller hangs up before anyone answers",
    "busy": "the extension dials a client whose line is busy",
    "transfer": "incoming call answered by the first extension, transferred to the second, who talks; recorded",
    "ring-group": "incoming call rings every extension at once; the second answers, the others' cards close",
    "click-to-call": "the PBX rings the extension first, then dials the client, who answers; recorded",
    "recording": "incoming call answered; the recording is announced separately, seconds after the end",
}
# In --fast mode the requests go out back to back and the timeline is placed in the past, so talk times and
# the order of timestamps stay those of a real call.
FAST_GAP_SECONDS = 0.0
LATE_RECORDING_SECONDS = 6.0


class ScenarioError(ValueError):
    """A scenario or an option the timeline cannot be built from; the message says which."""


@dataclass(frozen=True)
class Step:
    """One thing the PBX reports. kind: route (the routing question), ringing, answered, leg_ended, ended,
    recording (a recording announced after the end). In an outgoing call `ringing` is the call starting at the
    extension (for click-to-call: the PBX ringing the employee) and `answered` the client answering."""

    at: float
    kind: str
    extension: str = ""


@dataclass(frozen=True)
class Timeline:
    scenario: str
    call_id: str
    direction: str  # "in" | "out"
    client: str  # E.164
    did: str  # E.164 or ""
    start: dt.datetime
    steps: tuple[Step, ...]
    result: str  # our result enum
    recorded: bool
    fast: bool = False
    extensions: tuple[str, ...] = field(default=())

    def moment(self, step: Step) -> dt.datetime:
        return self.start + dt.timedelta(seconds=step.at)

    def delay_before(self, index: int) -> float:
        """Seconds to wait before sending step `index`: the gap since the previous step, or none when fast."""
        if self.fast or index == 0:
            return FAST_GAP_SECONDS if index else 0.0
        return max(0.0, self.steps[index].at - self.steps[index - 1].at)

    @property
    def ended_at(self) -> dt.datetime:
        return self.moment(next(s for s in self.steps if s.kind == "ended"))

    @property
    def answered_by(self) -> list[str]:
        return [s.extension for s in self.steps if s.kind == "answered" and s.extension]

    @property
    def rang(self) -> list[str]:
        return list(dict.fromkeys(s.extension for s in self.steps if s.kind == "ringing" and s.extension))

    @property
    def first_answer(self) -> Step | None:
        return next((s for s in self.steps if s.kind == "answered"), None)

    @property
    def talk_seconds(self) -> int:
        """Connected time: from the first answer to the end (a transfer keeps the client connected)."""
        first = self.first_answer
        if first is None:
            return 0
        return int(self.ended_at.timestamp() - self.moment(first).timestamp())

    @property
    def duration_seconds(self) -> int:
        return int(self.ended_at.timestamp() - self.start.timestamp())

    @property
    def late_recording(self) -> bool:
        return any(s.kind == "recording" for s in self.steps)

    def as_plan(self) -> dict[str, Any]:
        """What the simulated PBX remembers of the call (the sandbox PBX answers call details from it)."""
        return {
            "scenario": self.scenario,
            "direction": self.direction,
            "client": self.client,
            "did": self.did,
            "start": self.start.isoformat(),
            "ended_at": self.ended_at.isoformat(),
            "result": self.result,
            "talk_seconds": self.talk_seconds,
            "duration_seconds": self.duration_seconds,
            "answered_by": self.answered_by,
            "rang": self.rang,
            "recorded": self.recorded,
            "late_recording": self.late_recording,
        }


def new_call_id(prefix: str = "sim") -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def _extensions(options: dict[str, Any], needed: int) -> tuple[str, ...]:
    chosen = [str(options.get("extension") or "").strip()]
    chosen += [str(x).strip() for x in options.get("extensions") or []]
    unique = tuple(dict.fromkeys(x for x in chosen if x))
    bad = [x for x in unique if not is_extension(x)]
    if bad:
        raise ScenarioError(f"not an extension (2 to 6 digits): {bad[0]!r}")
    if len(unique) < needed:
        raise ScenarioError(
            f"this scenario needs {needed} extension(s); the tenant has {len(unique)} (add extensions first)"
        )
    return unique


def build_timeline(scenario: str, options: dict[str, Any]) -> Timeline:
    """The timeline of one scenario. options: from (E.164 client phone), to (E.164 DID, may be ""),
    extension (the first extension), extensions (more extensions for ring-group and transfer), call_id,
    fast (bool), start (aware datetime; default now, or in the past when fast)."""
    if scenario not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    client = str(options.get("from") or "").strip()
    if not client:
        raise ScenarioError("a client phone number (--from) is needed")
    did = str(options.get("to") or "").strip()
    fast = bool(options.get("fast"))
    talk = int(options.get("talk_seconds") or 8)
    exts = _extensions(options, 3 if scenario == "ring-group" else 2 if scenario == "transfer" else 1)
    first = exts[0]
    direction, recorded, result = "in", True, "answered"
    if scenario in {"answered", "recording"}:
        steps = [
            Step(0.0, "route"),
            Step(0.5, "ringing", first),
            Step(4.0, "answered", first),
            Step(4.0 + talk, "leg_ended", first),
            Step(4.0 + talk, "ended"),
        ]
        if scenario == "recording":
            steps.append(Step(4.0 + talk + LATE_RECORDING_SECONDS, "recording"))
    elif scenario == "missed":
        steps = [
            Step(0.0, "route"),
            Step(0.5, "ringing", first),
            Step(12.0, "leg_ended", first),
            Step(12.0, "ended"),
        ]
        recorded, result = False, "missed"
    elif scenario == "busy":
        direction, recorded, result = "out", False, "busy"
        steps = [Step(0.0, "ringing", first), Step(3.0, "leg_ended", first), Step(3.0, "ended")]
    elif scenario == "transfer":
        second = exts[1]
        steps = [
            Step(0.0, "route"),
            Step(0.5, "ringing", first),
            Step(3.0, "answered", first),
            Step(3.0 + talk / 2, "ringing", second),
            Step(6.0 + talk / 2, "leg_ended", first),
            Step(6.0 + talk / 2, "answered", second),
            Step(6.0 + talk * 1.5, "leg_ended", second),
            Step(6.0 + talk * 1.5, "ended"),
        ]
    elif scenario == "ring-group":
        group, taker = exts[:3], exts[1]
        steps = [Step(0.0, "route")]
        steps += [Step(0.5, "ringing", x) for x in group]
        steps.append(Step(5.0, "answered", taker))
        steps += [Step(5.0, "leg_ended", x) for x in group if x != taker]
        steps += [Step(5.0 + talk, "leg_ended", taker), Step(5.0 + talk, "ended")]
    else:  # click-to-call: the PBX calls the employee (ringing), then the client, who answers
        direction = "out"
        steps = [
            Step(0.0, "ringing", first),
            Step(5.0, "answered", first),
            Step(5.0 + talk, "leg_ended", first),
            Step(5.0 + talk, "ended"),
        ]
    total = max(s.at for s in steps)
    start = options.get("start")
    if start is None:
        # Fast: the whole call happened just now, so no timestamp lies in the future.
        start = timezone.now() - dt.timedelta(seconds=total + 1 if fast else 0)
    return Timeline(
        scenario=scenario,
        call_id=str(options.get("call_id") or new_call_id()),
        direction=direction,
        client=client,
        did=did,
        start=start,
        steps=tuple(steps),
        result=result,
        recorded=recorded,
        fast=fast,
        extensions=exts,
    )


# A client number for simulated calls when none is given: a valid Russian mobile number (phonenumbers accepts it)
# that the demo tenant's sandbox CRM knows by name.
DEFAULT_CLIENT = "+79161110022"


def default_options(tenant: Any, **given: Any) -> dict[str, Any]:
    """Options for build_timeline from the tenant's own data where not given: its first external phone as the
    DID, its extensions in number order (the first rings; ring-group and transfer use the next ones)."""
    from integrations.models import Extension, ExternalPhone

    numbers = list(
        Extension.objects.filter(tenant=tenant).order_by("number").values_list("number", flat=True)
    )
    first = given.get("extension") or (numbers[0] if numbers else "")
    options: dict[str, Any] = {
        "from": given.get("from") or DEFAULT_CLIENT,
        "to": given.get("to")
        if given.get("to") is not None
        else (
            ExternalPhone.objects.filter(tenant=tenant)
            .order_by("number")
            .values_list("number", flat=True)
            .first()
            or ""
        ),
        "extension": first,
        "extensions": [n for n in numbers if n != first],
        "fast": bool(given.get("fast")),
    }
    if given.get("call_id"):
        options["call_id"] = given["call_id"]
    return options
