"""Checks on an inbound body that every provider needs before it parses anything.

PostgreSQL refuses NUL characters in text and jsonb columns (SQLite stores them), so a body carrying one would
authenticate, parse and then crash on INSERT with a 500; and Python's json module recurses once per nesting
level, so a body of a few thousand `[` raises RecursionError instead of ValueError. No provider sends either,
so both are refused up front as bad input, in the provider's own error format.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

# Real payloads nest three or four levels deep; Python's json module gives up near 1000.
MAX_NESTING = 64

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
# A JSON \u0000 escape: an odd number of backslashes before u0000 (an even number is an escaped backslash).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000", re.IGNORECASE)


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of a JSON-like text, ignoring brackets inside strings; linear time."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def _texts(raw: bytes, content_type: str) -> list[str]:
    """The texts a parser would see: the body itself, and for a form each decoded value (Mango posts its JSON
    in a `json` form field, so the nesting is only visible once the value is decoded)."""
    text = raw.decode("utf-8", errors="replace")
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        return [text] + [value for _name, value in parse_qsl(text, keep_blank_values=True)]
    return [text]


def body_problem(raw: bytes, content_type: str) -> str | None:
    """Why this body must be refused before parsing, or None. The message names the problem, never a value."""
    if not raw:
        return None
    if b"\x00" in raw:
        return "NUL character in the body"
    for text in _texts(raw, content_type or ""):
        if "\x00" in text or _NUL_ESCAPE.search(text):
            return "NUL character in the body"
        if nesting_depth(text) > MAX_NESTING:
            return f"Body nested deeper than {MAX_NESTING} levels"
    return None
