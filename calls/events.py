"""The normalised call event every PBX adapter produces.

The pipeline (calls.services) knows only this shape, never a provider's field names. Adapters fill what their
PBX says; everything else keeps its neutral default.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any, Literal

EventKind = Literal["ringing", "answered", "held", "leg_ended", "completed", "recording_ready", "unknown"]
Direction = Literal["in", "out", "internal", ""]
Location = Literal["ivr", "queue", "agent", ""]

KINDS: tuple[str, ...] = (
    "ringing",
    "answered",
    "held",
    "leg_ended",
    "completed",
    "recording_ready",
    "unknown",
)
# Call results, our own enum (DESIGN.md "Call").
RESULTS: tuple[str, ...] = (
    "answered",
    "missed",
    "cancelled",
    "busy",
    "no_answer",
    "not_available",
    "not_allowed",
    "failed",
    "unknown",
)


# The columns these fields are stored in (Call, CallEvent). PostgreSQL refuses a longer value with an error that
# would surface as a 500 after the webhook authenticated; SQLite silently stores it. tests/security checks that
# these numbers match the models.
MAX_LENGTHS: dict[str, int] = {
    "provider_call_id": 200,
    "leg_id": 200,
    "client_phone_raw": 200,
    "order_key": 100,
}


@dataclass(frozen=True)
class NormalisedEvent:
    """One PBX event, normalised.

    provider_call_id: the PBX's id of the whole call (e.g. a session id or an entry id).
    leg_id: the PBX's id of one leg, when it has legs.
    order_key: sorts the call's events in the order they happened (not arrival); fixed-width strings.
    dedupe_key: unique per PBX connection: the same webhook twice gives the same key; a transfer's second
        `answered` or another leg gives a new one.
    extensions: every extension this event involves; `extension` the one it is about (who rings, who answered).
    outcome: on `completed`, the call's result in our enum when the PBX says it ("" = derive from events).
    recording_expected: on `completed`/`recording_ready`, whether a recording file will exist (None = unknown).
    recording: provider hints for fetching it later (e.g. a recording id); never credentials.
    correlation_id: the id our click-to-call command got back (a session or command id).
    settle: what the adapter still has to work out when the event is applied, because the webhook itself may
        not do it (read the cache, look up the directory): the inbox processor hands such an event to the
        adapter's `settle_event()` first. Empty = the event is complete as parsed.
    raw: the payload as received, with credentials stripped.
    """

    provider_call_id: str
    kind: EventKind
    order_key: str
    dedupe_key: str
    timestamp: dt.datetime
    leg_id: str = ""
    direction: Direction = ""
    location: Location = ""
    client_phone_raw: str = ""
    client_phone: str = ""
    external_phone: str = ""
    extension: str = ""
    extensions: tuple[str, ...] = ()
    disconnect_reason: str = ""
    outcome: str = ""
    talk_seconds: int | None = None
    duration_seconds: int | None = None
    recording_expected: bool | None = None
    recording: dict[str, Any] = field(default_factory=dict)
    correlation_id: str = ""
    final: bool = False
    settle: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            object.__setattr__(self, "kind", "unknown")
        if self.timestamp.tzinfo is None:
            raise ValueError("NormalisedEvent.timestamp must be timezone-aware")
        object.__setattr__(self, "timestamp", self.timestamp.astimezone(dt.UTC))
        if self.outcome and self.outcome not in RESULTS:
            object.__setattr__(self, "outcome", "unknown")

    def oversized(self) -> str | None:
        """Which field is longer than its column, as a message for the PBX (no value), or None."""
        for name, limit in MAX_LENGTHS.items():
            if len(getattr(self, name)) > limit:
                return f"{name} longer than {limit} characters"
        return None

    def as_record(self) -> dict[str, Any]:
        """The normalised fields (without raw) as JSON-safe data, stored on the CallEvent."""
        # Field by field rather than dataclasses.asdict (a deep copy of everything, raw included): webhooks call
        # this on every event.
        data = {name: getattr(self, name) for name in _RECORD_FIELDS}
        data["timestamp"] = self.timestamp.isoformat()
        data["extensions"] = list(self.extensions)
        data["recording"] = dict(self.recording)
        data["settle"] = dict(self.settle)
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any], raw: dict[str, Any] | None = None) -> NormalisedEvent:
        values = dict(data)
        values["timestamp"] = dt.datetime.fromisoformat(values["timestamp"])
        values["extensions"] = tuple(values.get("extensions") or ())
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known}, raw=raw or {})


_RECORD_FIELDS = tuple(f.name for f in fields(NormalisedEvent) if f.name != "raw")


def strip_credentials(payload: Any, secrets: list[str], keys: tuple[str, ...] = ()) -> Any:
    """A copy of payload without credential fields (by name) or values (the connection's secrets)."""
    sensitive = {
        "sign",
        "signature",
        "token",
        "vpbx_api_key",
        "api_key",
        "key",
        "x-client-sign",
    }
    sensitive.update(k.lower() for k in keys)
    if isinstance(payload, dict):
        return {
            k: ("***" if str(k).lower() in sensitive else strip_credentials(v, secrets, keys))
            for k, v in payload.items()
        }
    if isinstance(payload, list):
        return [strip_credentials(v, secrets, keys) for v in payload]
    if isinstance(payload, str):
        for secret in secrets:
            if secret and secret in payload:
                payload = payload.replace(secret, "***")
        return payload
    return payload
