"""Mango Office VPBX, main API (server-to-server webhooks and commands)."""

from __future__ import annotations

from integrations.providers.base import Field, PbxProvider


class MangoProvider(PbxProvider):
    key = "mango"
    settings_fields = (
        Field("api_url", "url", default="https://app.mango-office.ru/vpbx/"),
        Field("crm_routing", "bool", default=True),
        Field("reconcile_hours", "int", default=24, minimum=0, maximum=24 * 14),
        Field("timestamp_offset", "str", default="auto"),
        Field("recording_grace_seconds", "int", default=60, minimum=0, maximum=3600),
    )
    secret_fields = (Field("api_key", "secret"), Field("api_salt", "secret"))
    inbound_paths = (
        "events/call",
        "events/summary",
        "events/recording",
        "events/record/added",
        "events/dtmf",
        "ping",
    )
