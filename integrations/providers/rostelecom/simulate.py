"""Simulated calls as Rostelecom sends them (`manage.py simulate_call`): signed `get_number_info` and
`call_events` (new / connected / disconnected / end) for one scenario timeline (integrations/simulation.py).

The outcome comes afterwards from `call_info`, which the portal asks the real PBX: for a simulated session the PBX
answers "not found", so after call_info's window the call completes from its events alone (docs/simulator.md).
"""

from __future__ import annotations

from typing import Any

from integrations.providers.base import SimulatedRequest
from integrations.providers.rostelecom.wire import dump_json
from integrations.simulation import Step, Timeline, build_timeline

BUSY_REASON = "3"  # disconnect_reason of a busy callee (pbx.md §1.3.1)
NORMAL_REASON = "0"


class RostelecomSimulation:
    """Simulation half of RostelecomProvider."""

    def simulate(self, scenario: str, options: dict[str, Any]) -> list[SimulatedRequest]:
        timeline = build_timeline(scenario, options)
        base = f"/hooks/rostelecom/{self.connection.public_id}/"  # type: ignore[attr-defined]
        domain = str(self.settings.get("domain") or "pbx.invalid")  # type: ignore[attr-defined]
        out: list[SimulatedRequest] = []
        for index, step in enumerate(timeline.steps):
            delay = timeline.delay_before(index)
            if step.kind == "route":
                data: dict[str, Any] = {
                    "domain": domain,
                    "session_id": timeline.call_id,
                    "from_number": timeline.client.lstrip("+"),
                    "request_number": timeline.did.lstrip("+"),
                }
                out.append(
                    self._simulated(base + "get_number_info", data, delay, "get_number_info", timeline)
                )
                continue
            data = self._call_event(timeline, step, domain)
            if data is None:
                continue  # Rostelecom announces no recording separately: `end` says is_record
            what = f"call_events {data['state']} {step.extension}".strip()
            out.append(self._simulated(base + "call_events", data, delay, what, timeline))
        return out

    def _simulated(
        self, path: str, data: dict[str, Any], delay: float, what: str, timeline: Timeline
    ) -> SimulatedRequest:
        body = dump_json(data)
        headers = {"Content-Type": "application/json", **self.signed_headers(body)}  # type: ignore[attr-defined]
        return SimulatedRequest(path, body, headers, delay, what, timeline.call_id)

    def _call_event(self, timeline: Timeline, step: Step, domain: str) -> dict[str, Any] | None:
        states = {"ringing": "new", "answered": "connected", "leg_ended": "disconnected", "ended": "end"}
        if step.kind not in states:
            return None
        moment = timeline.moment(step).astimezone(self.zone)  # type: ignore[attr-defined]
        data: dict[str, Any] = {
            "session_id": timeline.call_id,
            "timestamp": moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            "type": "incoming" if timeline.direction == "in" else "outbound",
            "state": states[step.kind],
        }
        extension = step.extension
        if step.kind == "ended":
            answered = timeline.answered_by
            extension = answered[-1] if answered else (timeline.rang[-1] if timeline.rang else "")
            data["is_record"] = "true" if timeline.recorded else ""
        if timeline.direction == "in":
            data["from_number"] = f"sip:{timeline.client}@{domain}"
            # On `new` of the first ring the callee is the line; later states name the employee's SIP user.
            first_ring = step.kind == "ringing" and step.extension == timeline.rang[0]
            data["request_number"] = (
                f"sip:{timeline.did.lstrip('+')}@{domain}" if first_ring else f"user{extension}@{domain}"
            )
            data["request_pin"] = extension
        else:
            data["from_number"] = f"sip:{extension}@{domain}"
            data["from_pin"] = extension
            data["request_number"] = timeline.client.lstrip("+")
        if step.kind == "leg_ended":
            data["disconnect_reason"] = BUSY_REASON if timeline.result == "busy" else NORMAL_REASON
        return data
