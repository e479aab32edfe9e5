"""WireCRM "API PBX" (custom telephony integration): the portal plays the PBX."""

from __future__ import annotations

from integrations.providers.base import CrmProvider, Field


class WireCrmProvider(CrmProvider):
    key = "wirecrm"
    auth_failure_status = 401
    settings_fields = (Field("start_timeout_ms", "int", default=700, minimum=100, maximum=5000),)
    secret_fields = (Field("webhook_url", "url"), Field("pbx_token", "secret", issued=True))
    inbound_paths = ("make-call",)
