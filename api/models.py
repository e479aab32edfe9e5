"""Tenant API keys: the one secret the portal stores hashed (shown once, never revealed).

A key is high-entropy (≥ 32 characters, generated ones are 256 random bits), so one SHA-256 is the right hash:
a slow password hash would only make every API request slow, and there is no small key space to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets as pysecrets

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from integrations.models import Tenant

KEY_PREFIX = "cbk_"
MIN_KEY_LENGTH = 32
# How often last_used_at is written: once a minute is enough to see which keys are alive, and keeps a busy
# reporting tool from turning every read into a write.
LAST_USED_RESOLUTION_SECONDS = 60


def new_api_key() -> str:
    """A fresh key: a recognisable prefix (so a leaked one is easy to grep for) and 256 random bits."""
    return KEY_PREFIX + pysecrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="api_keys", verbose_name=_("tenant")
    )
    name = models.CharField(
        max_length=100, help_text=_("What the key is for, e.g. reporting."), verbose_name=_("name")
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False, verbose_name=_("key hash"))
    # The first characters only: enough to tell keys apart in the admin, useless to an attacker.
    hint = models.CharField(max_length=12, editable=False, verbose_name=_("hint"))
    created_at = models.DateTimeField(default=timezone.now, editable=False, verbose_name=_("created at"))
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False, verbose_name=_("revoked at"))
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False, verbose_name=_("last used at"))

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = _("API key")
        ordering = ["tenant", "name", "-created_at"]
        constraints = [
            # Revoked keys stay for the audit trail; a name is reused by the key that replaced it.
            models.UniqueConstraint(
                fields=["tenant", "name"],
                condition=models.Q(revoked_at__isnull=True),
                name="unique_active_key",
            ),
        ]

    def __str__(self) -> str:
        state = " (revoked)" if self.revoked_at else ""
        return f"{self.tenant.slug}/{self.name} {self.hint}…{state}"

    @classmethod
    def issue(cls, tenant: Tenant, name: str, key: str | None = None) -> tuple[ApiKey, str]:
        """Store a key (a given one, or a fresh one); returns the row and the plaintext, which is never stored."""
        key = key or new_api_key()
        row = cls.objects.create(tenant=tenant, name=name, key_hash=hash_key(key), hint=key[:8])
        return row, key

    def matches(self, key: str) -> bool:
        from integrations.providers.base import secrets_equal

        return secrets_equal(hash_key(key), self.key_hash)

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            type(self).objects.filter(pk=self.pk).update(revoked_at=self.revoked_at)

    @property
    def active(self) -> bool:
        return self.revoked_at is None
