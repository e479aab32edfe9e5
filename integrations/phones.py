"""The one phone-number helper. Extensions are never parsed here: they are not phone numbers."""

from __future__ import annotations

import functools

import phonenumbers

DEFAULT_REGION = "RU"


class InvalidPhone(ValueError):
    pass


def to_e164(raw: str, region: str = DEFAULT_REGION) -> str:
    """Parse a phone number in any common written form ('8 (916) 123-45-67', '79161234567', 'sip:+7916…@host')
    into E.164. Raises InvalidPhone when it is not a possible number."""
    parsed, problem = _parse(raw or "", (region or DEFAULT_REGION).upper())
    if problem:
        raise InvalidPhone(problem)
    return parsed


@functools.lru_cache(maxsize=8192)
def _parse(raw: str, region: str) -> tuple[str, str]:
    """(E.164, "") or ("", why not). Cached: a webhook parses its caller and line numbers, the line numbers
    repeat on every call, and parsing is a good part of a webhook's own work."""
    try:
        return _parse_uncached(raw, region), ""
    except InvalidPhone as exc:
        return "", str(exc)


def _parse_uncached(raw: str, region: str) -> str:
    text = (raw or "").strip()
    if text.lower().startswith(("sip:", "sips:", "tel:")):
        text = text.split(":", 1)[1]
    text = text.split("@", 1)[0].strip()
    if not text:
        raise InvalidPhone("empty phone number")
    digits = "".join(ch for ch in text if ch.isdigit())
    # Written in the tenant's national form first ('8 (495) …' is Moscow, not Vietnam); a number that is not
    # valid there but valid with a '+' in front ('79161234567' without '+') is taken as international.
    candidates = [text] if text.startswith("+") else [text, f"+{digits}"]
    possible: str | None = None
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if phonenumbers.is_valid_number(number):
            return formatted
        if possible is None and phonenumbers.is_possible_number(number) and len(digits) > 6:
            possible = formatted
    if possible:
        return possible
    raise InvalidPhone(f"not a phone number: {raw!r}")


def to_e164_or_none(raw: str | None, region: str = DEFAULT_REGION) -> str | None:
    try:
        return to_e164(raw or "", region)
    except InvalidPhone:
        return None


def digits_only(e164: str) -> str:
    """'+79161234567' → '79161234567' (Planfix, RetailCRM and others want no '+')."""
    return "".join(ch for ch in e164 if ch.isdigit())


def is_extension(value: str) -> bool:
    """Extensions are short digit strings (2 to 6 digits); anything longer is a phone number."""
    return value.isdigit() and 2 <= len(value) <= 6


# Numbers whose caller pays a premium or shares the cost: the toll-fraud targets click-to-call never dials.
COSTLY_NUMBER_TYPES = {
    phonenumbers.PhoneNumberType.PREMIUM_RATE: "premium-rate",
    phonenumbers.PhoneNumberType.SHARED_COST: "shared-cost",
}


def costly_number_type(e164: str) -> str | None:
    """'premium-rate' or 'shared-cost' for such numbers (libphonenumber's number types), else None."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    return COSTLY_NUMBER_TYPES.get(phonenumbers.number_type(number))


def number_region(e164: str) -> str | None:
    """The ISO 3166 region a number belongs to ('+7 701…' is KZ, '+7 916…' RU), None when none claims it."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.region_code_for_number(number)
