"""manage.py rotate_secrets: re-encrypt every connection's secrets with the first key of FIELD_ENCRYPTION_KEYS."""

from __future__ import annotations

from typing import Any

from cryptography.fernet import InvalidToken
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction

from integrations.crypto import fernet
from integrations.models import CrmConnection, PbxConnection


class Command(BaseCommand):
    help = (
        "Re-encrypt every PBX and CRM connection's secrets with the first key of FIELD_ENCRYPTION_KEYS, so an "
        "older key can then be removed from the list (docs/security.md). Idempotent; one transaction."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be re-encrypted, write nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        rotator = fernet()
        counts: dict[str, int] = {}
        try:
            with transaction.atomic():
                for model in (PbxConnection, CrmConnection):
                    table = model._meta.db_table
                    counts[model._meta.verbose_name_plural] = 0
                    # The raw column: Fernet tokens are rotated as they are, never decrypted into model objects.
                    with connection.cursor() as cursor:
                        cursor.execute(f"SELECT id, secrets FROM {table} WHERE secrets <> ''")  # noqa: S608
                        rows = cursor.fetchall()
                        for pk, token in rows:
                            rotated = rotator.rotate(token.encode()).decode()
                            cursor.execute(f"UPDATE {table} SET secrets = %s WHERE id = %s", [rotated, pk])  # noqa: S608
                            counts[model._meta.verbose_name_plural] += 1
                if options["dry_run"]:
                    transaction.set_rollback(True)
        except InvalidToken as exc:  # a secret no configured key can read
            raise CommandError(
                f"a stored secret cannot be decrypted with FIELD_ENCRYPTION_KEYS ({type(exc).__name__}); "
                "nothing was changed"
            ) from None
        prefix = "[dry run] " if options["dry_run"] else ""
        for name, count in counts.items():
            self.stdout.write(f"{prefix}{count} {name} re-encrypted with the first key.")
