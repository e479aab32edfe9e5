"""Keeping CRMs in step with the portal's configuration.

Some CRMs hold a copy of it: RetailCRM's telephony module carries `additionalCodes` (extension → user) and
`externalPhones` (DID → site). Every change that alters those — an extension, mapping or external phone added,
edited or deleted, a connection edited or its `client_id` regenerated, `import_tenant`, the PBX directory
import — calls `request_crm_sync`, and each active CRM connection queues what its provider needs (debounced
outbox jobs; providers with nothing to sync ask for nothing).
"""

from __future__ import annotations

import logging

from calls import outbox
from integrations.models import CrmConnection
from integrations.providers.base import get_provider

logger = logging.getLogger("callbridge.crm_sync")


def request_crm_sync(tenant_id: int | None) -> int:
    """Queue every active CRM connection's sync jobs for the tenant; returns how many jobs were new."""
    if tenant_id is None:
        return 0
    created = 0
    for crm in CrmConnection.objects.filter(tenant_id=tenant_id, active=True).select_related("tenant"):
        created += outbox.create_jobs(crm, get_provider(crm).jobs_for_sync())
    if created:
        logger.info("tenant %s: %s CRM sync job(s) queued", tenant_id, created)
    return created
