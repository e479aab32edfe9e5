"""Rostelecom virtual PBX ("Виртуальная АТС Ростелекома") integration API.

Wire facts (shared/protocols/pbx.md §1): every request, in both directions, is a JSON POST carrying `X-Client-ID`
and `X-Client-Sign` = lower-case hex sha256(client_id + body + sign_key) over the exact bytes. The PBX posts
`call_events` (new / connected / disconnected / end, no sequence number, no duration) and asks
`get_number_info` synchronously before routing an incoming call; we call `call_info` after `end` for the
outcome, `call_back` for click-to-call, `get_record` for a temporary recording link and `users_info` for the
directory. Decisions on the digest's open questions are in docs/providers/rostelecom.md.

The package, by concern: wire.py (signature, JSON bytes, parties, time stamps), webhooks.py (what the PBX
sends us), api.py (what we send it), call_info.py (the call's outcome after `end`), simulate.py (simulated
calls for `simulate_call`); this module holds the adapter's configuration and its answers to the pipeline.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import zoneinfo
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from integrations.providers.base import CheckResult, Field, JobKind, JobSpec, PbxProvider, SchemaError
from integrations.providers.rostelecom.api import RostelecomApi
from integrations.providers.rostelecom.call_info import CALL_INFO, RostelecomCallInfo
from integrations.providers.rostelecom.simulate import RostelecomSimulation
from integrations.providers.rostelecom.webhooks import RostelecomWebhooks
from integrations.providers.rostelecom.wire import signature

if TYPE_CHECKING:
    from calls.events import NormalisedEvent
    from calls.models import Call

logger = logging.getLogger("callbridge.rostelecom")


class RostelecomProvider(
    RostelecomWebhooks, RostelecomApi, RostelecomCallInfo, RostelecomSimulation, PbxProvider
):
    key = "rostelecom"
    settings_fields = (
        Field("api_url", "url", default="https://api.cloudpbx.rt.ru"),
        # Required: users_info and call_back name the domain (the seed's users_info request carries it).
        Field("domain", "str", default=""),
        Field("routing_budget_ms", "int", default=800, minimum=100, maximum=10000),
        Field("time_zone", "str", default="Europe/Moscow"),
        Field("record_ip", "str", default=""),
        # How call_back names the employee: "pin" (from_pin) or "sipuri" (from_sipuri = sip_login@domain).
        Field("call_back_from", "choice", default="pin", choices=("pin", "sipuri")),
    )
    secret_fields = (Field("client_id", "secret"), Field("sign_key", "secret"))
    inbound_paths = ("call_events", "get_number_info")
    auth_failure_status = 403
    # About three attempts within two minutes (outbox schedule 10 s, 30 s, 60 s); then the call completes from
    # its events alone.
    job_kinds = {CALL_INFO: JobKind(window=dt.timedelta(minutes=2), ordered=False)}

    @classmethod
    def clean_settings(cls, data: dict[str, Any] | None) -> dict[str, Any]:
        cleaned = super().clean_settings(data)
        if not str(cleaned.get("domain") or "").strip():
            raise SchemaError(
                "settings.domain",
                "is required: the virtual PBX's domain, e.g. example.rt.ru (users_info and call_back name it)",
            )
        try:
            zoneinfo.ZoneInfo(cleaned.get("time_zone") or "Europe/Moscow")
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise SchemaError(
                "settings.time_zone", f"unknown time zone {cleaned.get('time_zone')!r}"
            ) from None
        if cleaned.get("record_ip"):
            try:
                ipaddress.ip_address(cleaned["record_ip"])
            except ValueError:
                raise SchemaError(
                    "settings.record_ip", f"must be an IP address, got {cleaned['record_ip']!r}"
                ) from None
        return cleaned

    def check_connection(self) -> CheckResult:
        """users_info: an authenticated, signed read of the PBX directory; changes nothing."""
        return self.check_by_directory("users_info")

    @property
    def zone(self) -> dt.tzinfo:
        try:
            return zoneinfo.ZoneInfo(self.settings.get("time_zone") or "Europe/Moscow")
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            logger.warning("rostelecom %s: bad time_zone setting; using Europe/Moscow", self.connection)
            return zoneinfo.ZoneInfo("Europe/Moscow")

    @property
    def region(self) -> str:
        return self.connection.tenant.region or "RU"

    def _credentials(self) -> tuple[str, str]:
        return str(self.secrets.get("client_id") or ""), str(self.secrets.get("sign_key") or "")

    def signed_headers(self, body: bytes) -> dict[str, str]:
        client_id, sign_key = self._credentials()
        return {"X-Client-ID": client_id, "X-Client-Sign": signature(client_id, body, sign_key)}

    def is_final(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        """`end` plus call_info's outcome; or, when call_info gave up, `end` alone. Internal calls reach no CRM,
        so they are final at `end` without asking call_info."""
        from calls.models import OutboundJob

        if any(e.kind == "completed" and e.final for e in events):
            return True
        if not any(e.kind == "completed" for e in events):
            return False
        if call.direction == "internal":
            return True
        return OutboundJob.objects.filter(
            call=call, kind=CALL_INFO, status__in=[OutboundJob.DEAD, OutboundJob.FAILED]
        ).exists()

    def recording_expected(self, call: Call, events: Sequence[NormalisedEvent]) -> bool:
        """`end` said is_record "true" or call_info said is_record: the switch is on (the pipeline adds "and
        the call was answered"); a later False does not take back an earlier True."""
        return any(e.recording_expected is True for e in events)

    def jobs_after_ingest(self, call: Call, new_events: Sequence[NormalisedEvent]) -> list[JobSpec]:
        ends = [e for e in new_events if e.kind == "completed" and not e.final]
        if not ends or call.direction == "internal":
            return []
        return [
            JobSpec(
                CALL_INFO,
                f"call_info:{call.provider_call_id}",
                {"session_id": call.provider_call_id},
                call=call,
                order_key=ends[0].order_key,
            )
        ]
