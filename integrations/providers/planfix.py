"""Planfix telephony API: the portal plays the PBX."""

from __future__ import annotations

from integrations.providers.base import CrmProvider, Field


class PlanfixProvider(CrmProvider):
    key = "planfix"
    auth_failure_status = 401
    settings_fields = (
        Field(
            "api_url", "url", help="Planfix address for PBX requests, e.g. https://acme.planfix.ru/tel/api"
        ),
        Field("analytics", "map", default={}, help="Planfix field → call attribute or fixed text"),
    )
    secret_fields = (Field("planfix_token", "secret"), Field("pbx_token", "secret", issued=True))
    inbound_paths = ("",)
