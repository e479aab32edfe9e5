"""The telephony module's registration (`integration-modules/{code}/edit`): the integrationModule document built
from the current mappings and site codes, and the debounced re-sync job.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.utils import timezone

from integrations.models import Extension, ExtensionMapping, ExternalPhoneSiteCode
from integrations.phones import InvalidPhone, to_e164
from integrations.providers.base import JobSpec, ProviderError, public_base_url
from integrations.providers.retailcrm.api import RetailCrmError, _user_id

logger = logging.getLogger("callbridge.retailcrm")


MODULE_NAME = "Callbridge"
SYNC = "retailcrm.sync"
SYNC_DEBOUNCE_SECONDS = 30


class RetailCrmRegistration:
    """Module registration of RetailCrmProvider."""

    def integration_module(self) -> dict[str, Any]:
        """The integrationModule document, built from the current mappings and site codes."""
        connection = self.connection
        client_id = self.secrets.get("client_id") or ""
        if not client_id:
            raise ProviderError(
                "RetailCRM client_id is not set: generate one before registering",
                permanent=True,
                flag_connection=True,
            )
        urls = connection.inbound_urls()
        send_events = bool(self.settings.get("send_events"))
        mappings = (
            ExtensionMapping.objects.filter(
                crm_connection=connection, extension__tenant_id=connection.tenant_id
            )
            .exclude(extension__kind=Extension.GROUP)  # a group is no RetailCRM user's code
            .select_related("extension")
            .order_by("extension__number")
        )
        site_codes = (
            ExternalPhoneSiteCode.objects.filter(
                crm_connection=connection, external_phone__tenant_id=connection.tenant_id
            )
            .exclude(code="")
            .select_related("external_phone")
            .order_by("external_phone__number")
        )
        return {
            "code": self.module_code,
            "integrationCode": self.module_code,
            "active": bool(connection.active),
            "name": MODULE_NAME,
            "clientId": client_id,
            "accountUrl": f"{public_base_url()}/admin/integrations/tenant/{connection.tenant_id}/change/",
            "integrations": {
                "telephony": {
                    "makeCallUrl": urls["make-call"],
                    "changeUserStatusUrl": urls["user-status"],
                    # With allowEdit, codes users type in RetailCRM are wiped by our next push unless we merge
                    # them first (register() does, with allow_crm_edits); without the setting, RetailCRM shows
                    # the portal's mappings read-only.
                    "allowEdit": bool(self.settings.get("allow_crm_edits")),
                    "inputEventSupported": send_events,
                    "outputEventSupported": send_events,
                    "hangupEventSupported": send_events,
                    "additionalCodes": [
                        {"userId": _user_id(m.crm_user_id), "code": m.extension.number} for m in mappings
                    ],
                    "externalPhones": [
                        {"siteCode": s.code, "externalPhone": s.external_phone.number} for s in site_codes
                    ],
                }
            },
        }

    def register(self) -> dict[str, list[Any]]:
        """Push the module document. With allow_crm_edits, RetailCRM's current module is read first and merged:
        the portal's mapping wins for every extension code (and site code for every external phone) it knows;
        codes and phones entered in RetailCRM for others are kept in the push and recorded on the connection as
        proposals (`CrmConnection.crm_proposals`, shown in the admin; "Import mappings edited in RetailCRM"
        adopts them)."""
        module = self.integration_module()
        proposals: list[dict[str, Any]] = []
        if self.settings.get("allow_crm_edits"):
            module, proposals = self._merged_with_retailcrm(module)
        answer = self.client().edit_module(self.module_code, module)
        if proposals != (self.connection.crm_proposals or []):
            type(self.connection).objects.filter(pk=self.connection.pk).update(crm_proposals=proposals)
            self.connection.crm_proposals = proposals
        info = answer.get("info")
        info = info if isinstance(info, dict) else {}  # an empty info comes as [] (digest §2.2)
        result: dict[str, list[Any]] = {
            "notExistUsersIds": list(info.get("notExistUsersIds") or []),
            "notExistSiteCodes": list(info.get("notExistSiteCodes") or []),
        }
        if proposals:
            result["proposals"] = proposals
        if result["notExistUsersIds"] or result["notExistSiteCodes"]:
            logger.warning(
                "retailcrm %s: registration reports unknown users/sites %s", self.connection, result
            )
        return result

    def _merged_with_retailcrm(self, module: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            current = self.client().get_module(self.module_code).get("integrationModule") or {}
        except RetailCrmError as exc:
            if exc.status == 404 or exc.error_msg.startswith("Not found"):
                return module, []  # not registered yet: nothing entered in RetailCRM to keep
            raise
        theirs = ((current.get("integrations") or {}) if isinstance(current, dict) else {}).get(
            "telephony"
        ) or {}
        telephony = module["integrations"]["telephony"]
        proposals: list[dict[str, Any]] = []
        ours_codes = {entry["code"] for entry in telephony["additionalCodes"]}
        for entry in theirs.get("additionalCodes") or []:
            code, user_id = str(entry.get("code") or "").strip(), entry.get("userId")
            if code and user_id not in (None, "") and code not in ours_codes:
                ours_codes.add(code)
                telephony["additionalCodes"].append({"userId": _user_id(str(user_id)), "code": code})
                proposals.append({"code": code, "userId": str(user_id)})
        region = self.connection.tenant.region
        ours_phones = {entry["externalPhone"] for entry in telephony["externalPhones"]}
        for entry in theirs.get("externalPhones") or []:
            raw, site = (
                str(entry.get("externalPhone") or "").strip(),
                str(entry.get("siteCode") or "").strip(),
            )
            try:
                phone = to_e164(raw, region)
            except InvalidPhone:
                phone = raw
            if raw and site and phone not in ours_phones:
                ours_phones.add(phone)
                telephony["externalPhones"].append({"siteCode": site, "externalPhone": raw})
                proposals.append({"externalPhone": raw, "siteCode": site})
        return module, proposals

    def jobs_for_sync(self) -> list[JobSpec]:
        """One registration per 30-second bucket, sent 30 s after the first change in it, so a burst of admin edits
        becomes one request that carries all of them (the document is built when the job runs)."""
        now = timezone.now()
        bucket = int(now.timestamp() // SYNC_DEBOUNCE_SECONDS)
        return [
            JobSpec(
                SYNC, f"sync:{bucket}", {}, None, "", due_at=now + dt.timedelta(seconds=SYNC_DEBOUNCE_SECONDS)
            )
        ]
