"""The telephony module's registration (`integration-modules/{code}/edit`): the integrationModule document built
from the current mappings and site codes, and the debounced re-sync job.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from integrations.models import ExtensionMapping, ExternalPhoneSiteCode
from integrations.providers.base import JobSpec, ProviderError, public_base_url
from integrations.providers.retailcrm.api import _user_id

if TYPE_CHECKING:
    pass

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
                    # Users may edit codes and phones in RetailCRM; "read the module back" imports them.
                    "allowEdit": True,
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
        answer = self.client().edit_module(self.module_code, self.integration_module())
        info = answer.get("info")
        info = info if isinstance(info, dict) else {}  # an empty info comes as [] (digest §2.2)
        result = {
            "notExistUsersIds": list(info.get("notExistUsersIds") or []),
            "notExistSiteCodes": list(info.get("notExistSiteCodes") or []),
        }
        if result["notExistUsersIds"] or result["notExistSiteCodes"]:
            logger.warning(
                "retailcrm %s: registration reports unknown users/sites %s", self.connection, result
            )
        return result

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
