"""RetailCRM (Simla.com) telephony integration module: the portal plays the PBX."""

from __future__ import annotations

from integrations.providers.base import CrmProvider, Field


class RetailCrmProvider(CrmProvider):
    key = "retailcrm"
    settings_fields = (
        Field("account_url", "url"),
        Field("module_code", "str", default="callbridge"),
        Field("upload_strategy", "choice", default="immediate", choices=("immediate", "periodic")),
        Field("upload_interval_minutes", "int", default=10, minimum=1, maximum=1440),
        Field("send_events", "bool", default=True),
    )
    secret_fields = (Field("api_key", "secret"), Field("client_id", "secret", issued=True))
    inbound_paths = ("make-call", "user-status")
