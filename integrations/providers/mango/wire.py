"""Mango's wire format, shared by both directions: the signature, the compact JSON it covers, result and
disconnect codes read by class (shared/protocols/pbx.md §2.6), tolerant value parsing and event ordering.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


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
