"""A call's story for people: what the PBX reported, whom routing chose, what went to each CRM, the recording.

Built from the stored rows (CallEvent.normalised, RoutingDecision, OutboundJob, Recording), in time order; the
call page shows it above the raw JSON, which stays available behind a toggle.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.utils.translation import gettext as _

from calls.models import RESULT_LABELS, Call, OutboundJob, Recording


@dataclass(frozen=True)
class Entry:
    at: dt.datetime | None
    text: str
    status: str = ""  # "ok", "failed", "pending": how the entry is coloured


def _event_text(kind: str, data: dict[str, Any]) -> str:
    extension = data.get("extension") or ""
    if kind == "ringing":
        if data.get("direction") == Call.OUT and extension:
            return _("%(extension)s dials %(phone)s") % {
                "extension": extension,
                "phone": data.get("client_phone") or data.get("client_phone_raw") or "?",
            }
        if extension:
            return _("Rings extension %(extension)s") % {"extension": extension}
        caller = data.get("client_phone") or data.get("client_phone_raw")
        return _("%(caller)s calls %(did)s") % {
            "caller": caller or _("a caller"),
            "did": data.get("external_phone") or "?",
        }
    if kind == "answered":
        return _("Extension %(extension)s answered") % {"extension": extension or "?"}
    if kind == "held":
        return _("Put on hold by %(extension)s") % {"extension": extension or "?"}
    if kind == "leg_ended":
        text = _("Extension %(extension)s left the call") % {"extension": extension or "?"}
        if data.get("talk_seconds"):
            text += " " + _("after %(seconds)s s of talk") % {"seconds": data["talk_seconds"]}
        return text
    if kind == "completed":
        text = _("Hang-up")
        if data.get("outcome"):
            text += ": " + str(RESULT_LABELS.get(data["outcome"], data["outcome"]))
        if data.get("disconnect_reason"):
            text += f" ({data['disconnect_reason']})"
        return text
    if kind == "recording_ready":
        return _("The PBX has a recording")
    return _("Event %(kind)s") % {"kind": kind}


JOB_STATUS = {
    OutboundJob.SENT: "ok",
    OutboundJob.FAILED: "failed",
    OutboundJob.DEAD: "failed",
    OutboundJob.EXPIRED: "failed",
    OutboundJob.PENDING: "pending",
}


def call_timeline(call: Call) -> list[Entry]:
    entries: list[Entry] = []
    for event in call.events.order_by("order_key", "id"):
        entries.append(Entry(event.occurred_at, _event_text(event.kind, event.normalised or {})))
    for decision in call.routing_decisions.order_by("created_at"):
        if decision.extension:
            text = _("Routing: %(source)s chose extension %(extension)s in %(ms)s ms") % {
                "source": decision.source,
                "extension": decision.extension,
                "ms": decision.latency_ms,
            }
        else:
            text = _("Routing: no answer (%(source)s, %(ms)s ms)") % {
                "source": decision.source,
                "ms": decision.latency_ms,
            }
        entries.append(Entry(decision.created_at, text))
    jobs = call.jobs.select_related("crm_connection", "pbx_connection").order_by("created_at", "id")
    for job in jobs:
        connection = job.connection
        target = f"{connection.key} ({connection.provider})" if connection else job.connection_ref
        text = _("Message %(kind)s to %(target)s: %(status)s") % {
            "kind": job.kind,
            "target": target,
            "status": job.get_status_display(),
        }
        if job.attempts > 1:
            text += " " + _("after %(attempts)s attempts") % {"attempts": job.attempts}
        if job.last_error and job.status != OutboundJob.SENT:
            text += f" — {job.last_error[:200]}"
        entries.append(Entry(job.sent_at or job.created_at, text, JOB_STATUS.get(job.status, "")))
    recording = getattr(call, "recording", None)
    if recording is not None:
        if recording.state == Recording.STORED:
            entries.append(
                Entry(
                    recording.stored_at,
                    _("Recording stored (%(size)s bytes)") % {"size": recording.size or 0},
                    "ok",
                )
            )
        elif recording.state == Recording.UNAVAILABLE:
            entries.append(
                Entry(
                    recording.updated_at,
                    _("Recording unavailable: %(reason)s") % {"reason": recording.reason},
                    "failed",
                )
            )
        else:
            entries.append(
                Entry(
                    recording.created_at,
                    _("Recording %(state)s") % {"state": recording.get_state_display()},
                    "pending",
                )
            )
    far_future = dt.datetime.max.replace(tzinfo=dt.UTC)
    return sorted(entries, key=lambda e: e.at or far_future)
