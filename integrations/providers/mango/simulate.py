"""Simulated calls as Mango sends them (`manage.py simulate_call`): signed form posts to `events/call` (one per
leg state, `seq` per leg), `events/recording` and `events/summary` for one scenario timeline
(integrations/simulation.py).

An incoming call starts with an IVR leg, so with `crm_routing` the portal routes it through `commands/route` as it
would a real one (against the real Mango API that command is refused for an invented leg; the scenario's
extension rings anyway). Click-to-call is Mango's callback: the employee's leg first, then the client's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from integrations.providers.base import SimulatedRequest
from integrations.providers.mango.wire import CALLBACK_PREFIX, compact_json, sign
from integrations.simulation import Step, Timeline, build_timeline

ENDED_NORMALLY, BY_CALLER, BY_CALLEE, BUSY = 1100, 1110, 1120, 1121
CALLBACK_BRIDGE_SECONDS = 2


class _Legs:
    """Leg ids and their `seq` counters for one simulated call."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.seq: dict[str, int] = {}
        self.by_extension: dict[str, str] = {}

    def next(self, leg: str) -> int:
        self.seq[leg] = self.seq.get(leg, 0) + 1
        return self.seq[leg]

    def for_extension(self, extension: str) -> str:
        if extension not in self.by_extension:
            self.by_extension[extension] = f"{self.timeline.call_id}-{extension}-{len(self.by_extension) + 1}"
        return self.by_extension[extension]


class MangoSimulation:
    """Simulation half of MangoProvider."""

    def simulate(self, scenario: str, options: dict[str, Any]) -> list[SimulatedRequest]:
        timeline = build_timeline(scenario, options)
        self._sim_base = f"/hooks/mango/{self.connection.public_id}/"  # type: ignore[attr-defined]
        legs = _Legs(timeline)
        out: list[SimulatedRequest] = []
        for index, step in enumerate(timeline.steps):
            items = self._step_payloads(timeline, step, legs)
            for position, (path, data, what) in enumerate(items):
                delay = timeline.delay_before(index) if position == 0 else 0.0
                out.append(self._simulated(path, data, delay, what, timeline))
        return out

    def _simulated(
        self, path: str, data: dict[str, Any], delay: float, what: str, timeline: Timeline
    ) -> SimulatedRequest:
        text = compact_json(data)
        key, salt = self.secrets.get("api_key", ""), self.secrets.get("api_salt", "")  # type: ignore[attr-defined]
        body = urlencode([("vpbx_api_key", key), ("sign", sign(key, text, salt)), ("json", text)]).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return SimulatedRequest(self._sim_base + path, body, headers, delay, what, timeline.call_id)

    def _leg(
        self, timeline: Timeline, leg: str, state: str, at: float, legs: _Legs, **fields: Any
    ) -> tuple[str, dict[str, Any], str]:
        data = {
            "entry_id": timeline.call_id,
            "call_id": leg,
            "timestamp": int(timeline.start.timestamp() + at),
            "seq": legs.next(leg),
            "call_state": state,
            "location": fields.pop("location", "abonent"),
            **fields,
        }
        who = data.get("to", {}).get("extension") or data.get("from", {}).get("extension") or data["location"]
        return "events/call", data, f"events/call {state} {who}"

    def _step_payloads(
        self, timeline: Timeline, step: Step, legs: _Legs
    ) -> list[tuple[str, dict[str, Any], str]]:
        client, did = timeline.client.lstrip("+"), timeline.did.lstrip("+")
        ivr = f"{timeline.call_id}-ivr"
        if step.kind == "route":
            party = {"from": {"number": client}, "to": {"number": did, "line_number": did}}
            return [
                self._leg(timeline, ivr, "Appeared", step.at, legs, location="ivr", **party),
                self._leg(timeline, ivr, "Connected", step.at, legs, location="ivr", **party),
            ]
        if step.kind == "recording":
            return [self._recording(timeline, step.at, legs)]
        if step.kind == "ended":
            recorded_now = timeline.recorded and not timeline.late_recording
            items = [self._recording(timeline, step.at, legs)] if recorded_now else []
            return [*items, self._summary(timeline)]
        if timeline.direction == "in":
            return self._incoming(timeline, step, legs, client, did, ivr)
        if timeline.scenario == "click-to-call":
            return self._callback(timeline, step, legs, client, did)
        leg = legs.for_extension(step.extension)
        party = {
            "from": {"extension": step.extension, "number": f"sip:{step.extension}@sim.mangosip.ru"},
            "to": {"number": client, "line_number": did},
        }
        state = {"ringing": "Appeared", "answered": "Connected", "leg_ended": "Disconnected"}[step.kind]
        if state == "Disconnected":
            party["disconnect_reason"] = BUSY if timeline.result == "busy" else BY_CALLEE  # type: ignore[assignment]
        return [self._leg(timeline, leg, state, step.at, legs, **party)]

    def _incoming(
        self, timeline: Timeline, step: Step, legs: _Legs, client: str, did: str, ivr: str
    ) -> list[tuple[str, dict[str, Any], str]]:
        items = []
        first_ring = step.kind == "ringing" and not legs.by_extension
        previous = list(legs.by_extension.values())
        leg = legs.for_extension(step.extension)
        routed = any(s.kind == "route" for s in timeline.steps)
        party: dict[str, Any] = {
            "from": {"number": client},
            "to": {
                "extension": step.extension,
                "number": f"sip:{step.extension}@sim.mangosip.ru",
                "line_number": did,
            },
        }
        if first_ring and routed:
            ivr_party = {"from": {"number": client}, "to": {"number": did, "line_number": did}}
            items.append(
                self._leg(
                    timeline,
                    ivr,
                    "Disconnected",
                    step.at,
                    legs,
                    location="ivr",
                    disconnect_reason=ENDED_NORMALLY,
                    **ivr_party,
                )
            )
            party["from"]["taken_from_call_id"] = ivr
        elif step.kind == "ringing" and timeline.scenario == "transfer" and previous:
            party["from"]["taken_from_call_id"] = previous[0]
            party["transfer"] = "blind"
        if step.kind == "ringing":
            items.append(self._leg(timeline, leg, "Appeared", step.at, legs, **party))
        elif step.kind == "answered":
            items.append(self._leg(timeline, leg, "Connected", step.at, legs, **party))
        else:
            # The caller hangs up on whoever talked last, or on a ringing phone; other legs just end.
            last_talker = bool(timeline.answered_by) and step.extension == timeline.answered_by[-1]
            reason = BY_CALLER if last_talker or not timeline.answered_by else ENDED_NORMALLY
            items.append(
                self._leg(timeline, leg, "Disconnected", step.at, legs, disconnect_reason=reason, **party)
            )
        return items

    def _callback(
        self, timeline: Timeline, step: Step, legs: _Legs, client: str, did: str
    ) -> list[tuple[str, dict[str, Any], str]]:
        """commands/callback: Mango rings the employee's leg, then bridges a leg that dials the client."""
        command = {"command_id": f"{CALLBACK_PREFIX}{timeline.call_id}", "callback_initiator": "API"}
        employee_leg, client_leg = f"{timeline.call_id}-emp", f"{timeline.call_id}-cli"
        employee = {
            "from": {"number": client},
            "to": {"extension": step.extension, "number": f"sip:{step.extension}@sim.mangosip.ru"},
            **command,
        }
        dialled = {
            "from": {
                "extension": step.extension,
                "number": f"sip:{step.extension}@sim.mangosip.ru",
                "taken_from_call_id": employee_leg,
            },
            "to": {"number": client, "line_number": did},
            **command,
        }
        if step.kind == "ringing":
            bridge = step.at + CALLBACK_BRIDGE_SECONDS
            return [
                self._leg(timeline, employee_leg, "Appeared", step.at, legs, **employee),
                self._leg(timeline, employee_leg, "Connected", bridge, legs, **employee),
                self._leg(timeline, client_leg, "Appeared", bridge, legs, **dialled),
                self._leg(
                    timeline, employee_leg, "Disconnected", bridge, legs, disconnect_reason=1000, **employee
                ),
            ]
        if step.kind == "answered":
            return [self._leg(timeline, client_leg, "Connected", step.at, legs, **dialled)]
        return [
            self._leg(
                timeline, client_leg, "Disconnected", step.at, legs, disconnect_reason=BY_CALLEE, **dialled
            )
        ]

    def _recording(self, timeline: Timeline, at: float, legs: _Legs) -> tuple[str, dict[str, Any], str]:
        talker = timeline.answered_by[-1] if timeline.answered_by else ""
        leg = (
            f"{timeline.call_id}-cli"
            if timeline.scenario == "click-to-call"
            else legs.by_extension.get(talker, "")
        )
        data = {
            "recording_id": f"{timeline.call_id}-rec",
            "recording_state": "Completed",
            "seq": 1,
            "entry_id": timeline.call_id,
            "call_id": leg,
            "extension": talker,
            "timestamp": int(timeline.start.timestamp() + at),
            "completion_code": 1000,
            "recipient": "Cloud",
        }
        return "events/recording", data, "events/recording Completed"

    def _summary(self, timeline: Timeline) -> tuple[str, dict[str, Any], str]:
        client, did = timeline.client.lstrip("+"), timeline.did.lstrip("+")
        answered = timeline.answered_by
        employee = answered[-1] if answered else (timeline.rang[-1] if timeline.rang else "")
        first_answer = timeline.first_answer
        start = int(timeline.start.timestamp())
        if timeline.direction == "in":
            parties = {
                "from": {"number": client},
                "to": {"extension": employee, "number": f"sip:{employee}@sim.mangosip.ru"},
            }
        else:
            parties = {
                "from": {"extension": employee, "number": f"sip:{employee}@sim.mangosip.ru"},
                "to": {"number": client},
            }
        reason = BUSY if timeline.result == "busy" else BY_CALLER if timeline.direction == "in" else BY_CALLEE
        data = {
            "entry_id": timeline.call_id,
            "call_direction": 1 if timeline.direction == "in" else 2,
            **parties,
            "line_number": did,
            "create_time": start,
            "forward_time": start,
            "talk_time": int(timeline.moment(first_answer).timestamp()) if first_answer else 0,
            "end_time": int(timeline.ended_at.timestamp()),
            "entry_result": 1 if answered else 0,
            "disconnect_reason": reason,
        }
        return "events/summary", data, f"events/summary {timeline.result}"
