"""manage.py simulate_call <tenant-slug> --scenario S: play simulated calls through the portal's inbound URLs.

The tenant's active PBX connection's provider builds its own signed requests (`PbxProvider.simulate()`); this
command only paces them like a real call, POSTs them over HTTP to `--url` (default PUBLIC_BASE_URL) and prints
each step with the portal's answer. It knows no provider. Against a real (non-sandbox) PBX connection it asks for
`--yes`, because the tenant's active CRMs will receive the invented calls as real ones.
"""

from __future__ import annotations

import time
from typing import Any

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.models import Tenant
from integrations.phones import InvalidPhone, is_extension, to_e164
from integrations.providers.base import LABELS, ProviderError, get_provider, is_sandbox
from integrations.simulation import DESCRIPTIONS, SCENARIOS, ScenarioError, default_options

TIMEOUT = (3.05, 15)


class Command(BaseCommand):
    help = "Play simulated calls (" + ", ".join(SCENARIOS) + ") through the tenant's PBX inbound URLs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant", help="the tenant's slug, e.g. demo")
        parser.add_argument("--scenario", required=True, choices=SCENARIOS)
        parser.add_argument("--count", type=int, default=1, help="how many calls, one after another")
        parser.add_argument("--url", default="", help="the portal's base URL (default PUBLIC_BASE_URL)")
        parser.add_argument("--from", dest="from_phone", default="", help="the client's phone number")
        parser.add_argument(
            "--to", dest="did", default=None, help="the DID called (default: first external phone)"
        )
        parser.add_argument("--extension", default="", help="the extension (default: the tenant's first)")
        parser.add_argument(
            "--fast", action="store_true", help="send without pauses; timestamps stay realistic"
        )
        parser.add_argument(
            "--yes", action="store_true", help="go ahead on a real PBX connection (its CRMs get the calls)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"no tenant with slug {options['tenant']!r}")
        pbx = tenant.active_pbx()
        if pbx is None:
            raise CommandError(f"tenant {tenant.slug!r} has no active PBX connection")
        if options["count"] < 1:
            raise CommandError("--count must be at least 1")
        label = LABELS.get(pbx.provider, pbx.provider)
        if not is_sandbox(pbx.provider):
            crms = ", ".join(str(c) for c in tenant.active_crms()) or "none"
            warning = (
                f"{pbx} is a real PBX connection ({label}). The tenant's active CRMs ({crms}) will receive "
                "these simulated calls as real ones, and the portal will ask the real PBX about them."
            )
            if not options["yes"]:
                raise CommandError(warning + " Add --yes to go ahead.")
            self.stderr.write(self.style.WARNING("Warning: " + warning))
        given = self._given(tenant, options)
        base = (options["url"] or settings.PUBLIC_BASE_URL).rstrip("/")
        adapter = get_provider(pbx)
        self.stdout.write(f"{options['scenario']}: {DESCRIPTIONS[options['scenario']]}")
        self.stdout.write(f"PBX {pbx}: {label} → {base}")
        failed = 0
        with requests.Session() as session:
            for number in range(1, options["count"] + 1):
                failed += self._play(session, adapter, tenant, base, options, given, number)
        if failed:
            raise CommandError(f"{failed} request(s) were not answered 2xx")

    def _given(self, tenant: Tenant, options: dict[str, Any]) -> dict[str, Any]:
        region = tenant.region or "RU"
        given: dict[str, Any] = {"fast": options["fast"]}
        try:
            if options["from_phone"]:
                given["from"] = to_e164(options["from_phone"], region)
            if options["did"] is not None:
                given["to"] = to_e164(options["did"], region) if options["did"] else ""
        except InvalidPhone as exc:
            raise CommandError(str(exc)) from None
        if options["extension"]:
            if not is_extension(options["extension"]):
                raise CommandError(
                    f"--extension {options['extension']!r} is not an extension (2 to 6 digits)"
                )
            given["extension"] = options["extension"]
        return given

    def _play(
        self,
        session: requests.Session,
        adapter: Any,
        tenant: Tenant,
        base: str,
        options: dict[str, Any],
        given: dict[str, Any],
        number: int,
    ) -> int:
        try:
            simulated = adapter.simulate(options["scenario"], default_options(tenant, **given))
        except NotImplementedError:
            raise CommandError(f"the {adapter.key} provider cannot simulate calls (no simulate())") from None
        except (ScenarioError, ProviderError) as exc:
            raise CommandError(str(exc)) from None
        failed, elapsed = 0, 0.0
        self.stdout.write(f"Call {number}/{options['count']}:")
        for item in simulated:
            if item.delay_seconds and not options["fast"]:
                time.sleep(item.delay_seconds)
                elapsed += item.delay_seconds
            # Straight to the portal's own URL, not through integrations.http: that client's SSRF guard exists
            # for third-party targets and would refuse the local portal.
            try:
                response = session.post(
                    base + item.path, data=item.body, headers=item.headers, timeout=TIMEOUT
                )
            except requests.RequestException as exc:
                raise CommandError(
                    f"the portal at {base} did not answer ({exc}); is it running (make run)?"
                ) from None
            ok = 200 <= response.status_code < 300
            failed += 0 if ok else 1
            line = f"  +{elapsed:5.1f}s {item.description}: HTTP {response.status_code} {response.text[:200]}"
            self.stdout.write(line if ok else self.style.ERROR(line))
        call_ids = ", ".join(dict.fromkeys(i.call_id for i in simulated if i.call_id)) or "?"
        self.stdout.write(f"  PBX call {call_ids} sent; the worker now completes it and notifies the CRMs")
        for crm in tenant.active_crms():
            if crm.provider_cls.admin_page:
                page = f"{base}/admin/integrations/crmconnection/{crm.pk}/provider-page/"
                self.stdout.write(f"  {crm.provider_cls.admin_page_title} of {crm}: {page}")
        return failed
