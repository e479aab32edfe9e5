"""manage.py import_tenant FILE: create or update one tenant from its JSON document (`-` reads stdin)."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.tenant_file import TenantFileError, administrators, import_tenant, load_document


class Command(BaseCommand):
    help = (
        "Create or update a tenant from a JSON file (see docs/configuration.md). The file is the whole truth: "
        "connections, extensions and external phones it does not list are removed. One transaction: a "
        "rejected file changes nothing."
    )
    # Lets tests pass a stream for "-" the way Django's own createsuperuser does.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help='path of the tenant file, or "-" for standard input')
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="validate and list what would change, then roll everything back",
        )
        parser.add_argument(
            "--create-only",
            action="store_true",
            help="refuse to touch a tenant whose slug exists already (provisioning scripts for new customers)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        text = self._read(options["file"], options.get("stdin") or sys.stdin)
        try:
            result = import_tenant(
                load_document(text), dry_run=options["dry_run"], create_only=options["create_only"]
            )
        except TenantFileError as exc:
            raise CommandError(f"tenant file rejected:\n{exc}") from None

        slug = result.tenant.slug
        prefix = "[dry run] " if result.dry_run else ""
        if result.created:
            self.stdout.write(self.style.SUCCESS(f"{prefix}Tenant {slug!r} created."))
        else:
            # An existing slug may be another customer's: say whose it is before listing what changed.
            self.stdout.write(
                f"{prefix}Tenant {slug!r} exists already; administered by {administrators(result.tenant)}."
            )
            if result.changes:
                self.stdout.write(self.style.SUCCESS(f"{prefix}Tenant {slug!r} updated."))
            else:
                self.stdout.write(f"{prefix}Tenant {slug!r} unchanged.")
        for change in result.changes:
            self.stdout.write(f"  {change}")
        for path in result.generated:
            # The value itself is never printed: it is revealed in the admin or by export --include-secrets.
            self.stdout.write(
                f"  {path}: token generated; reveal it in the admin or with export_tenant --include-secrets"
            )
        for name, key in result.generated_api_keys.items():
            if result.dry_run:
                self.stdout.write(f"  api key {name!r} would be generated")
                continue
            # Printed this once: only the key's hash is stored, so neither the admin nor export can show it.
            self.stdout.write(f"  api key {name!r} generated (shown once, store it now): {key}")
        if result.dry_run:
            self.stdout.write("[dry run] Nothing was written.")

    def _read(self, name: str, stdin: Any) -> str:
        if name == "-":
            return stdin.read()
        try:
            with open(name, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{name}: cannot read: {exc}") from None
