"""Tenant API keys in the admin: created (the key is shown once, in the message after saving) and revoked.

Tenant admins manage their tenants' keys; support staff see that keys exist, never a key. Nothing can reveal a
key later: only its hash is stored.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import RelatedOnlyFieldListFilter
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from api.models import ApiKey, hash_key, new_api_key
from integrations.admin_scoping import TenantScopedAdminMixin


class ApiKeyForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ("tenant", "name")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        tenant, name = cleaned.get("tenant"), cleaned.get("name")
        if tenant and name and ApiKey.objects.active().filter(tenant=tenant, name=name).exists():
            self.add_error(
                "name", _("This tenant already has an active key with this name: revoke it first.")
            )
        return cleaned


@admin.register(ApiKey)
class ApiKeyAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ("name", "tenant", "hint_display", "created_at", "last_used_at", "status")
    list_filter = (("tenant", RelatedOnlyFieldListFilter), ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "tenant__slug", "tenant__name")
    list_select_related = ("tenant",)
    readonly_fields = ("hint_display", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return ["tenant", "name"]
        return ["tenant", "name", *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        # A key is never edited: renaming one would change what the tenant file's "***" refers to.
        return ["tenant", "name", *self.readonly_fields] if obj else []

    def has_change_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False if obj is not None else super().has_change_permission(request, obj)

    @admin.display(description=_("Key"))
    def hint_display(self, obj: ApiKey) -> str:
        return f"{obj.hint}…" if obj.hint else "—"

    @admin.display(description=_("Status"))
    def status(self, obj: ApiKey) -> str:
        return f"revoked {obj.revoked_at:%Y-%m-%d %H:%M}" if obj.revoked_at else "active"

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            return
        key = new_api_key()
        obj.key_hash, obj.hint = hash_key(key), key[:8]
        super().save_model(request, obj, form, change)
        messages.warning(
            request,
            format_html(
                "New API key {} for {}: <code>{}</code> — copy it now. Only its hash is stored: it cannot be "
                "shown again (revoke it and create another if it is lost).",
                obj.name,
                obj.tenant,
                key,
            ),
        )

    @admin.action(description=_("Revoke the selected keys"), permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = 0
        for key in self.operable_queryset(request, queryset).filter(revoked_at__isnull=True):
            key.revoke()
            self.log_change(request, key, "Revoked.")
            count += 1
        self.message_user(request, f"{count} key(s) revoked; they stop working at once.")

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return self.may_write(request)
