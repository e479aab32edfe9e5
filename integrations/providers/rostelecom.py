"""Rostelecom virtual PBX ("Виртуальная АТС Ростелекома") integration API."""

from __future__ import annotations

from integrations.providers.base import Field, PbxProvider


class RostelecomProvider(PbxProvider):
    key = "rostelecom"
    settings_fields = (
        Field("api_url", "url", default="https://api.cloudpbx.rt.ru"),
        Field("domain", "str", default=""),
        Field("routing_budget_ms", "int", default=800, minimum=100, maximum=10000),
        Field("time_zone", "str", default="Europe/Moscow"),
        Field("record_ip", "str", default=""),
    )
    secret_fields = (Field("client_id", "secret"), Field("sign_key", "secret"))
    inbound_paths = ("call_events", "get_number_info")
