"""Importing a tenant's extensions from its PBX directory (the admin action "Import extensions from PBX").

Provider-neutral: the PBX adapter lists the directory (`list_extensions()`, e.g. Rostelecom `users_info`); this
module creates or updates the tenant's Extensions from it. Extensions the PBX no longer lists are kept: they may
still be mapped to CRM users or named in old calls, and deleting is the admin's decision.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction

from integrations.crm_sync import request_crm_sync
from integrations.models import Extension, ExtensionMapping, PbxConnection
from integrations.phones import is_extension
from integrations.providers.base import get_provider

logger = logging.getLogger("callbridge.directory")


def _clean_email(value: str) -> str:
    value = (value or "").strip()
    if not value:
        return ""
    try:
        validate_email(value)
    except ValidationError:
        return ""
    return value


def import_extensions(pbx_connection: PbxConnection) -> dict[str, Any]:
    """Create or update the tenant's Extensions from the PBX directory.

    Returns counts `created`, `updated`, `unchanged`, `skipped` (entries whose number is not an extension) and
    the numbers in `created_numbers` / `updated_numbers` for the admin message. A name or e-mail the PBX leaves
    empty does not erase the one typed in the portal. Raises the adapter's ProviderError (or the HTTP client's
    OutboundError) when the PBX cannot be asked; nothing is changed then.
    """
    with pbx_connection.outbound_scope():
        entries = get_provider(pbx_connection).list_extensions()
    report: dict[str, Any] = {
        "created": 0,
        "updated": 0,
        "unchanged": 0,
        "skipped": 0,
        "created_numbers": [],
        "updated_numbers": [],
    }
    seen: set[str] = set()
    with transaction.atomic():
        existing = {e.number: e for e in Extension.objects.filter(tenant_id=pbx_connection.tenant_id)}
        for entry in entries:
            number = (entry.number or "").strip()
            if not is_extension(number) or number in seen:
                report["skipped"] += 1
                continue
            seen.add(number)
            name = (entry.name or "").strip()[:200]
            email = _clean_email(entry.email)
            kind = Extension.GROUP if entry.kind == Extension.GROUP else Extension.USER
            sip_login = (entry.sip_login or "").strip()[:100]
            current = existing.get(number)
            if current is None:
                Extension.objects.create(
                    tenant_id=pbx_connection.tenant_id,
                    number=number,
                    name=name,
                    email=email,
                    kind=kind,
                    sip_login=sip_login,
                )
                report["created"] += 1
                report["created_numbers"].append(number)
                continue
            changes: dict[str, Any] = {}
            if name and name != current.name:
                changes["name"] = name
            if email and email != current.email:
                changes["email"] = email
            if sip_login and sip_login != current.sip_login:
                changes["sip_login"] = sip_login
            if kind != current.kind:
                # The PBX knows whether a number is a group; a group loses its CRM mappings (it has no user).
                changes["kind"] = kind
                if kind == Extension.GROUP:
                    ExtensionMapping.objects.filter(extension=current).delete()
            if changes:
                Extension.objects.filter(pk=current.pk).update(**changes)
                report["updated"] += 1
                report["updated_numbers"].append(number)
            else:
                report["unchanged"] += 1
        if report["created"] or report["updated"]:
            request_crm_sync(pbx_connection.tenant_id)  # RetailCRM's additionalCodes list the extensions
    logger.info(
        "directory import for %s: %s created, %s updated, %s unchanged, %s skipped",
        pbx_connection,
        report["created"],
        report["updated"],
        report["unchanged"],
        report["skipped"],
    )
    return report


def describe(report: dict[str, Any]) -> str:
    """One line for the admin: what the import changed."""
    parts = [
        f"{report['created']} created",
        f"{report['updated']} updated",
        f"{report['unchanged']} unchanged",
    ]
    if report["skipped"]:
        parts.append(f"{report['skipped']} skipped (not extensions)")
    numbers = report["created_numbers"] + report["updated_numbers"]
    return ", ".join(parts) + (f": {', '.join(numbers[:30])}" if numbers else "")
