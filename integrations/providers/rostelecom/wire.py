"""Rostelecom's wire format, shared by both directions: the X-Client-Sign signature and the exact JSON bytes it
covers, parties (phone number, PIN or SIP login), wall-clock time stamps, `result` codes and the order of
states within one instant (shared/protocols/pbx.md §1).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from integrations.phones import is_extension, to_e164_or_none
from integrations.providers.base import compact_json

if TYPE_CHECKING:
    pass


# Order of states sharing one millisecond: new < connected < disconnected < end < call_info.
RANKS = {"new": 0, "connected": 2, "disconnected": 3, "end": 4}
RANK_UNKNOWN = 1
RANK_CALL_INFO = 5


def signature(client_id: str, body: bytes, sign_key: str) -> str:
    """X-Client-Sign: lower-case hex SHA-256 of client_id + body + sign_key, over the exact body bytes."""
    return hashlib.sha256(client_id.encode() + body + sign_key.encode()).hexdigest()


def dump_json(data: Any) -> bytes:
    """The bytes we send and sign: ASCII-only JSON, so the signed string is the same under any encoding."""
    return compact_json(data)


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
