"""Services for the admin: register the module now, read back what users edited in RetailCRM, propose mappings
by e-mail, and queue a debounced re-registration; plus the one-line reports the admin's actions show
(RetailCrmProvider.admin_operations names them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.db import transaction

from integrations.models import (
    CrmConnection,
    Extension,
    ExtensionMapping,
    ExternalPhone,
    ExternalPhoneSiteCode,
)
from integrations.phones import InvalidPhone, to_e164
from integrations.providers.base import ProviderError, get_provider
from integrations.providers.retailcrm import RetailCrmProvider
from integrations.providers.retailcrm.api import _person_name

if TYPE_CHECKING:
    pass


USERS_MAX_PAGES = 50


def _adapter(crm_connection: CrmConnection) -> RetailCrmProvider:
    adapter = get_provider(crm_connection)
    if not isinstance(adapter, RetailCrmProvider):
        raise ValueError(f"{crm_connection} is not a RetailCRM connection")
    return adapter


@contextlib.contextmanager
def _flagging(crm_connection: CrmConnection) -> Iterator[None]:
    """Errors only the admin can fix (bad key, wrong account) also land on the connection's last_error."""
    try:
        yield
    except ProviderError as exc:
        if exc.flag_connection:
            crm_connection.flag_error(str(exc))
        raise


def register_module(crm_connection: CrmConnection) -> dict[str, list[Any]]:
    """Register or update the telephony module in RetailCRM now. Returns what RetailCRM did not recognise:
    {"notExistUsersIds": [...], "notExistSiteCodes": [...]}. Raises RetailCrmError/ProviderError."""
    with _flagging(crm_connection):
        return _adapter(crm_connection).register()


def read_module_back(crm_connection: CrmConnection) -> dict[str, Any]:
    """Import the extension codes and external phones users edited in RetailCRM. Mappings missing there are kept.
    Returns {"created": n, "updated": n, "unchanged": n, "skipped": ["reason", ...]}."""
    adapter = _adapter(crm_connection)
    with _flagging(crm_connection):
        answer = adapter.client().get_module(adapter.module_code)
    module = answer.get("integrationModule") or {}
    telephony = ((module.get("integrations") or {}) if isinstance(module, dict) else {}).get(
        "telephony"
    ) or {}
    tenant = crm_connection.tenant
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    skipped: list[str] = []

    def count(created: bool, changed: bool) -> None:
        counts["created" if created else "updated" if changed else "unchanged"] += 1

    with transaction.atomic():
        extensions = {e.number: e for e in Extension.objects.filter(tenant=tenant)}
        for entry in telephony.get("additionalCodes") or []:
            code, user_id = str(entry.get("code") or "").strip(), str(entry.get("userId") or "").strip()
            extension = extensions.get(code)
            if extension is None or not user_id:
                skipped.append(f"code {code or '?'} (user {user_id or '?'}): no such extension")
                continue
            mapping, created = ExtensionMapping.objects.get_or_create(
                extension=extension, crm_connection=crm_connection, defaults={"crm_user_id": user_id}
            )
            changed = not created and mapping.crm_user_id != user_id
            if changed:
                ExtensionMapping.objects.filter(pk=mapping.pk).update(crm_user_id=user_id)
            count(created, changed)
        phones = {p.number: p for p in ExternalPhone.objects.filter(tenant=tenant)}
        for entry in telephony.get("externalPhones") or []:
            raw, site = str(entry.get("externalPhone") or ""), str(entry.get("siteCode") or "").strip()
            try:
                phone = phones.get(to_e164(raw, tenant.region))
            except InvalidPhone:
                phone = None
            if phone is None or not site:
                skipped.append(f"external phone {raw or '?'} (site {site or '?'}): no such external phone")
                continue
            site_code, created = ExternalPhoneSiteCode.objects.get_or_create(
                external_phone=phone, crm_connection=crm_connection, defaults={"code": site}
            )
            changed = not created and site_code.code != site
            if changed:
                ExternalPhoneSiteCode.objects.filter(pk=site_code.pk).update(code=site)
            count(created, changed)
    return {**counts, "skipped": skipped}


def propose_mappings(crm_connection: CrmConnection) -> list[dict[str, Any]]:
    """Match RetailCRM users to Extensions by e-mail and create the missing mappings. Never overwrites one: an
    extension or a user already mapped otherwise is reported as a conflict. Each entry: extension, user_id,
    email, name, action (created | exists | conflict)."""
    adapter = _adapter(crm_connection)
    users: list[dict[str, Any]] = []
    with _flagging(crm_connection):
        client = adapter.client()
        for page in range(1, USERS_MAX_PAGES + 1):
            answer = client.users(page)
            users += [u for u in answer.get("users") or [] if isinstance(u, dict)]
            pages = (answer.get("pagination") or {}).get("totalPageCount") or 1
            if page >= int(pages):
                break
    by_email = {
        e.email.strip().lower(): e
        for e in Extension.objects.filter(tenant=crm_connection.tenant).exclude(email="")
    }
    proposals: list[dict[str, Any]] = []
    with transaction.atomic():
        mappings = {m.extension_id: m for m in ExtensionMapping.objects.filter(crm_connection=crm_connection)}
        mapped_users = {m.crm_user_id for m in mappings.values()}
        for user in users:
            email = str(user.get("email") or "").strip().lower()
            extension = by_email.get(email)
            if extension is None or user.get("active") is False or user.get("id") in (None, ""):
                continue
            user_id = str(user["id"])
            existing = mappings.get(extension.pk)
            if existing is not None:
                action = "exists" if existing.crm_user_id == user_id else "conflict"
            elif user_id in mapped_users:
                action = "conflict"
            else:
                mappings[extension.pk] = ExtensionMapping.objects.create(
                    extension=extension, crm_connection=crm_connection, crm_user_id=user_id
                )
                mapped_users.add(user_id)
                action = "created"
            proposals.append(
                {
                    "extension": extension.number,
                    "user_id": user_id,
                    "email": email,
                    "name": _person_name(user),
                    "action": action,
                }
            )
    if any(p["action"] == "created" for p in proposals):
        request_sync(crm_connection)
    return proposals


def request_sync(crm_connection: CrmConnection) -> int:
    """Queue a debounced re-registration (mappings or external phones changed). Returns how many jobs were new:
    calling it again within the same 30-second bucket adds nothing."""
    from calls import outbox

    if crm_connection.provider != RetailCrmProvider.key:
        return 0
    return outbox.create_jobs(crm_connection, _adapter(crm_connection).jobs_for_sync())


def register_module_report(crm_connection: CrmConnection) -> str:
    result = register_module(crm_connection)
    unknown = (
        [f"unknown user ids: {', '.join(map(str, result['notExistUsersIds']))}"]
        if result.get("notExistUsersIds")
        else []
    )
    if result.get("notExistSiteCodes"):
        unknown.append(f"unknown site codes: {', '.join(map(str, result['notExistSiteCodes']))}")
    return "telephony module registered" + (f" ({'; '.join(unknown)})" if unknown else "")


def read_module_back_report(crm_connection: CrmConnection) -> str:
    result = read_module_back(crm_connection)
    text = f"{result['created']} created, {result['updated']} updated, {result['unchanged']} unchanged"
    return text + (f"; skipped: {'; '.join(result['skipped'][:10])}" if result["skipped"] else "")


def propose_mappings_report(crm_connection: CrmConnection) -> str:
    proposals = propose_mappings(crm_connection)
    by_action: dict[str, list[str]] = {}
    for proposal in proposals:
        by_action.setdefault(proposal["action"], []).append(f"{proposal['extension']}→{proposal['user_id']}")
    if not by_action:
        return "no RetailCRM user's e-mail matches an extension"
    return "; ".join(f"{action}: {', '.join(items)}" for action, items in sorted(by_action.items()))
