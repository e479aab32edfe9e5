"""How people look calls up: by a phone number in any written form, or by an extension.

The admin's search box and the read API's `phone` and `extension` filters share these, so a number finds the
same calls wherever it is typed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from django.db.models import Q

from integrations.phones import digits_only, to_e164_or_none

PHONE_PUNCTUATION = set("+-() .")


def extension_condition(extension: str) -> Q:
    """Calls where this extension rang, answered, started the call, or was the first or last to answer."""
    # The lists are JSON arrays of strings: matching the quoted value finds "101" but not "1010".
    quoted = json.dumps(extension)
    return (
        Q(first_answered_extension=extension)
        | Q(last_answered_extension=extension)
        | Q(initiating_extension=extension)
        | Q(rang_extensions__icontains=quoted)
        | Q(answered_extensions__icontains=quoted)
    )


def phone_condition(term: str, regions: Iterable[str]) -> Q:
    """Calls whose client or external phone is `term`, written in any form, under each tenant region given
    (a number as people write it, "8 (916) 123-45-67", becomes E.164 under the tenant's own region); a
    partial number of at least 7 digits matches inside the stored E.164."""
    condition = Q(client_phone_raw__icontains=term)
    for region in regions:
        e164 = to_e164_or_none(term, region)
        if e164:
            condition |= Q(tenant__region=region) & (Q(client_phone=e164) | Q(external_phone=e164))
    digits = digits_only(term)
    if len(digits) >= 7 and all(ch.isdigit() or ch in PHONE_PUNCTUATION for ch in term):
        condition |= Q(client_phone__contains=digits) | Q(external_phone__contains=digits)
    return condition
