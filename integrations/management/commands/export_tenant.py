"""manage.py export_tenant SLUG: print one tenant as the JSON document import_tenant accepts."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.models import Tenant
from integrations.tenant_file import dump_document, export_tenant


class Command(BaseCommand):
    help = (
        'Print a tenant as JSON (see docs/configuration.md). Secrets are written as "***" unless '
        "--include-secrets; importing the output back changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="the tenant's slug")
        parser.add_argument(
            "--include-secrets",
            action="store_true",
            help='write secret values instead of "***" (the output then holds credentials: store it safely)',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["slug"]).first()
        if tenant is None:
            raise CommandError(f"no tenant with slug {options['slug']!r}")
        document = export_tenant(tenant, include_secrets=options["include_secrets"])
        self.stdout.write(dump_document(document), ending="")
