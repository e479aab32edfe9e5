"""The tenant-scoped admin for tenants, their memberships, connections, extensions and external phones.

Scoping (who sees and changes what) lives in integrations.admin_scoping. Secrets are write-only here: a form
never renders a stored secret, a blank field keeps it. Tokens the portal issues (Field.issued) can be
generated; a new one is shown once, and tenant admins can reveal or regenerate those tokens alone, because
they have to be pasted into the provider. Secrets a provider issued are never shown again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import RelatedOnlyFieldListFilter
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.module_loading import import_string
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from integrations import admin_tenant_file as tenant_file_page
from integrations import background, settings_form
from integrations.admin_scoping import (
    SameTenantInlineFormSet,
    TenantScopedAdminMixin,
    TenantScopedInlineMixin,
    is_superuser,
)
from integrations.crm_sync import request_crm_sync
from integrations.invitations import EmailMembershipForm, announce
from integrations.localtime import tenant_time
from integrations.models import (
    Connection,
    CrmConnection,
    Extension,
    ExtensionMapping,
    ExternalPhone,
    ExternalPhoneSiteCode,
    PbxConnection,
    Tenant,
    TenantMembership,
)
from integrations.providers.base import (
    CRM,
    GENERATE,
    LABELS,
    REGISTRY,
    SIDES,
    Field,
    ProviderError,
    SchemaError,
    get_provider,
    provider_class,
)

User = get_user_model()

SECRET_PREFIX = "secret__"
GENERATE_PREFIX = "generate__"


# ---------------------------------------------------------------------------------------------------------
# Memberships: add an existing user by username or e-mail, or create one; never a list of every user
# ---------------------------------------------------------------------------------------------------------


def find_user(identifier: str) -> Any:
    """The user with this username, else the one user with this e-mail."""
    user = User.objects.filter(username=identifier).first()
    if user is not None:
        return user
    by_email = list(User.objects.filter(email__iexact=identifier)[:2])
    if len(by_email) > 1:
        raise ValidationError(_("Several users have this e-mail address: give the username."))
    if not by_email:
        raise ValidationError(_("No user with this username or e-mail address."))
    return by_email[0]


class MembershipForm(forms.ModelForm):
    user_lookup = forms.CharField(
        label=_("Existing user"),
        required=False,
        help_text=_("Username or e-mail address of someone who already has a login."),
    )
    new_username = forms.CharField(label=_("Or a new user: username"), required=False, max_length=150)
    new_email = forms.EmailField(label=_("New user's e-mail"), required=False)
    new_password = forms.CharField(
        label=_("New user's password"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )

    class Meta:
        model = TenantMembership
        fields = ["role"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._new_user: tuple[str, str, str] | None = None
        if self.instance.pk:
            # The member is fixed once added; only the role changes.
            for name in ("user_lookup", "new_username", "new_email", "new_password"):
                if name in self.fields:
                    self.fields[name].disabled = True

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.instance.pk:
            return cleaned
        lookup = (cleaned.get("user_lookup") or "").strip()
        username = (cleaned.get("new_username") or "").strip()
        if lookup and username:
            raise ValidationError(_("Either name an existing user or create a new one, not both."))
        if not lookup and not username:
            raise ValidationError(_("Name an existing user (username or e-mail) or create a new one."))
        if lookup:
            try:
                user = find_user(lookup)
            except ValidationError as exc:
                self.add_error("user_lookup", exc)
                return cleaned
            tenant = cleaned.get("tenant") or (self.instance.tenant if self.instance.tenant_id else None)
            if tenant is not None and TenantMembership.objects.filter(tenant=tenant, user=user).exists():
                self.add_error(
                    "user_lookup",
                    _("%(user)s is already a member of %(tenant)s.")
                    % {"user": user.get_username(), "tenant": tenant},
                )
                return cleaned
            self.instance.user = user
            return cleaned
        self._clean_new_user(cleaned, username)
        return cleaned

    def _clean_new_user(self, cleaned: dict[str, Any], username: str) -> None:
        email = cleaned.get("new_email") or ""
        password = cleaned.get("new_password") or ""
        try:
            User.username_validator(username)
        except ValidationError as exc:
            self.add_error("new_username", exc)
        if User.objects.filter(username__iexact=username).exists():
            self.add_error("new_username", _("This username is taken: add the existing user instead."))
        if not email:
            self.add_error("new_email", _("A new user needs an e-mail address."))
        if not password:
            self.add_error("new_password", _("A new user needs a password."))
        else:
            try:
                password_validation.validate_password(password, User(username=username, email=email))
            except ValidationError as exc:
                self.add_error("new_password", exc)
        if not self.errors:
            self._new_user = (username, email, password)

    @property
    def member_key(self) -> str:
        """Who this row adds, for spotting the same person twice in one formset."""
        if self._new_user:
            return f"new:{self._new_user[0].lower()}"
        user_id = getattr(self.instance, "user_id", None)
        return f"user:{user_id}" if user_id else ""

    def save(self, commit: bool = True) -> TenantMembership:
        if self._new_user and not self.instance.user_id:
            username, email, password = self._new_user
            # is_staff lets the new member log in to this admin; what they see follows the membership.
            self.instance.user = User.objects.create_user(username, email, password, is_staff=True)
        return super().save(commit)


class MembershipFormSet(SameTenantInlineFormSet):
    def clean(self) -> None:
        super().clean()
        seen: set[str] = set()
        for form in self.forms:
            if not hasattr(form, "cleaned_data") or not form.has_changed() or self._should_delete_form(form):
                continue
            key = getattr(form, "member_key", "")
            if key and key in seen:
                raise ValidationError(_("The same user appears twice."))
            seen.add(key)


class MembershipInline(TenantScopedInlineMixin, admin.TabularInline):
    model = TenantMembership
    form = MembershipForm
    formset = MembershipFormSet
    fields = ("user_display", "role", "user_lookup", "new_username", "new_email", "new_password")
    readonly_fields = ("user_display",)
    extra = 0
    verbose_name_plural = _("Members (admins configure this tenant, support reads its call history)")

    def get_formset(self, request: HttpRequest, obj: Model | None = None, **kwargs: Any) -> Any:
        # Superusers find anyone (username or e-mail) or create a login with a password; tenant admins add by
        # exact e-mail only, and learn nothing about logins outside their tenants (integrations.invitations).
        if not is_superuser(request):
            kwargs["form"] = EmailMembershipForm
            kwargs["fields"] = ["role", "email"]
        return super().get_formset(request, obj, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> Any:
        if not is_superuser(request):
            return ("user_display", "role", "email")
        return super().get_fields(request, obj)

    @admin.display(description=_("User"))
    def user_display(self, obj: TenantMembership) -> str:
        return member_label(obj)


def member_label(membership: TenantMembership) -> str:
    if not membership.pk or not membership.user_id:
        return "—"
    # The address, not the username: an invited login's username is its address, an older login's is not, so
    # showing usernames would tell a tenant admin which addresses had a login before (integrations.invitations).
    user = membership.user
    return user.email or user.get_username()


# ---------------------------------------------------------------------------------------------------------
# Connections: settings as JSON, secrets write-only, issued tokens generated, revealed and regenerated
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretSlot:
    """One secret key in a connection form, and the providers of the form's side that use it."""

    name: str
    providers: tuple[str, ...]
    issued: bool  # issued by the portal for at least one of those providers


def secret_slots(side: str, provider: str | None) -> list[SecretSlot]:
    """The secret fields of one provider, or (a new connection, provider not yet chosen) of every provider
    of the side, each named once."""
    keys = [provider] if provider else [key for key, s in SIDES.items() if s == side]
    slots: dict[str, SecretSlot] = {}
    for key in keys:
        for field in provider_class(key).secret_fields:
            known = slots.get(field.name)
            slots[field.name] = SecretSlot(
                name=field.name,
                providers=(*known.providers, key) if known else (key,),
                issued=(known.issued if known else False) or field.issued,
            )
    return list(slots.values())


def describe_fields(fields: tuple[Field, ...]) -> str:
    parts = []
    for field in fields:
        text = f"{field.name} ({field.kind}"
        if field.choices:
            text += ": " + " | ".join(field.choices)
        if field.default not in (None, "", {}):
            text += f", default {json.dumps(field.default, ensure_ascii=False)}"
        parts.append(text + ")")
    return ", ".join(parts)


class PrettyJSONField(forms.JSONField):
    """Settings are edited as indented JSON."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value if value is not None else {}, ensure_ascii=False, indent=2, sort_keys=True)


class ConnectionForm(forms.ModelForm):
    """Base of the per-provider connection forms built by connection_form_class()."""

    slots: ClassVar[list[SecretSlot]] = []
    # The provider whose settings fields the form carries ("" = not chosen yet: the JSON editor alone).
    provider_key: ClassVar[str] = ""
    schema: ClassVar[tuple[Field, ...]] = ()

    settings = PrettyJSONField(
        label=_("Settings as JSON"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80, "class": "vLargeTextField"}),
        help_text=_(
            "A JSON object; keys the provider does not know are refused, missing ones take defaults."
        ),
    )
    settings_as_json = forms.BooleanField(
        label=_("Edit the settings as JSON (advanced)"),
        required=False,
        help_text=_("When ticked, the JSON below is saved and the fields above are ignored."),
    )

    @property
    def uses_generated_settings(self) -> bool:
        """The generated fields are saved unless the admin ticked "advanced", or posted none of them (a form
        posted as before the fields existed: its JSON is the settings)."""
        if not self.provider_key or self.cleaned_data.get("settings_as_json"):
            return False
        return any(name.startswith(settings_form.SETTING_PREFIX) for name in self.data)

    def _update_errors(self, errors: ValidationError) -> None:
        """The model's own settings checks (credential URLs must be https) name a key: shown at its field."""
        if self.uses_generated_settings and hasattr(errors, "error_dict") and "settings" in errors.error_dict:
            for error in errors.error_dict.pop("settings"):
                for message in error.messages:
                    key = message.split(":", 1)[0].removeprefix("settings.")
                    target = settings_form.SETTING_PREFIX + key
                    self.add_error(target if target in self.fields else None, message)
        super()._update_errors(errors)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generated: list[str] = []
        if self.provider_key:
            stored_settings = self.instance.settings if self.instance.pk else {}
            for name, value in settings_form.initial_values(self.schema, stored_settings or {}).items():
                self.initial.setdefault(name, value)
        stored = self.instance.secrets if self.instance.pk else {}
        for slot in self.slots:
            secret_field = self.fields.get(SECRET_PREFIX + slot.name)
            is_stored = bool(stored.get(slot.name))
            if secret_field is not None:
                state = str(_("Stored; leave blank to keep it.") if is_stored else _("Not set."))
                if slot.issued:
                    state += " " + str(_('Type "generate" or tick the box below for a new token.'))
                secret_field.help_text = state
            generate_field = self.fields.get(GENERATE_PREFIX + slot.name)
            if generate_field is not None:
                # A connection without its token cannot authenticate its provider: offer one by default.
                generate_field.initial = not is_stored
                if is_stored:
                    generate_field.help_text = _("The current token stops working at once.")

    def clean_settings(self) -> dict[str, Any]:
        value = self.cleaned_data.get("settings")
        if value in (None, ""):
            return {}
        if not isinstance(value, dict):
            raise ValidationError(_("Settings must be a JSON object."))
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.uses_generated_settings:
            # The generated fields are the settings; anything else stored (a key from an older version) is
            # refused by the schema as it would be in the JSON editor.
            data, errors = settings_form.collect(self.schema, cleaned)
            for name, message in errors.items():
                self.add_error(name, message)
            cleaned["settings"] = data
        provider = cleaned.get("provider") or self.instance.provider
        if provider not in REGISTRY:
            return cleaned  # the provider field carries the error
        provider_cls = provider_class(provider)
        own = {field.name: field for field in provider_cls.secret_fields}
        secrets = {k: v for k, v in (self.instance.secrets or {}).items() if k in own}
        generated = []
        for slot in self.slots:
            typed = (cleaned.get(SECRET_PREFIX + slot.name) or "").strip()
            wants_new = bool(cleaned.get(GENERATE_PREFIX + slot.name)) or typed == GENERATE
            if slot.name not in own:
                if typed:
                    self.add_error(
                        SECRET_PREFIX + slot.name,
                        _("%(provider)s has no secret %(name)s.")
                        % {"provider": LABELS[provider], "name": slot.name},
                    )
                continue
            if wants_new and own[slot.name].issued:
                secrets[slot.name] = provider_cls.new_secret(slot.name)
                generated.append(slot.name)
            elif typed == GENERATE:
                self.add_error(
                    SECRET_PREFIX + slot.name,
                    _("%(provider)s issues %(name)s itself: paste the value from its cabinet.")
                    % {"provider": LABELS[provider], "name": slot.name},
                )
            elif typed:
                secrets[slot.name] = typed
        try:
            self.instance.secrets = provider_cls.clean_secrets(secrets)
        except SchemaError as exc:
            name = exc.field.split(".", 1)[-1]
            target = SECRET_PREFIX + name if SECRET_PREFIX + name in self.fields else None
            self.add_error(target, str(exc))
        self.generated = generated
        return cleaned


def connection_form_class(
    model: type[Connection], slots: list[SecretSlot], provider: str | None
) -> type[ConnectionForm]:
    attrs: dict[str, Any] = {"slots": slots, "__module__": __name__}
    if provider in REGISTRY:
        attrs["provider_key"] = provider
        attrs["schema"] = provider_class(provider).settings_fields
        attrs.update(settings_form.settings_fields(attrs["schema"]))
    for slot in slots:
        label = slot.name
        if provider is None:
            # One form for every provider of the side: say whose secret each field is.
            label = f"{slot.name} ({', '.join(LABELS[p] for p in slot.providers)})"
        attrs[SECRET_PREFIX + slot.name] = forms.CharField(
            label=label,
            required=False,
            widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        )
        if slot.issued:
            attrs[GENERATE_PREFIX + slot.name] = forms.BooleanField(
                label=_("Generate a new %(name)s") % {"name": slot.name}, required=False
            )
    return type(f"{model.__name__}Form", (ConnectionForm,), attrs)


def secrets_help(writable: bool, new: bool) -> str:
    if not writable:
        return _("Secrets are encrypted at rest and never shown; this lists which ones are stored.")
    text = str(_("Secrets are encrypted and never shown in this form. A blank field keeps the stored value."))
    return text + (" " + str(_("Fill in only the secrets of the provider you chose.")) if new else "")


class ConnectionAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    change_form_template = "admin/integrations/connection/change_form.html"
    secret_template = "admin/integrations/connection/secret.html"
    list_display = ("__str__", "tenant", "provider", "active", "error_flag")
    list_filter = (("tenant", RelatedOnlyFieldListFilter), "provider", "active")
    search_fields = ("key", "tenant__name", "tenant__slug", "public_id")
    list_select_related = ("tenant",)
    readonly_fields = ("public_id", "inbound_urls_display", "last_error", "last_error_at", "secrets_status")
    main_fields: tuple[str, ...] = ("tenant", "key", "provider", "active")

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            # The provider decides the shape of settings and secrets: a different provider is a new connection.
            fields.append("provider")
        if not is_superuser(request):
            # Opening a private network to a connection is the operator's decision (docs/security.md).
            fields.append("allowed_networks")
        if obj is not None and not is_superuser(request) and obj.reaches_private_network():
            fields = [f for f in fields if f != "last_error"] + ["last_error_hidden"]
        return fields

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "allowed_networks":
            return CommaListField(
                required=False, label=_("Allowed private networks"), help_text=db_field.help_text
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    @admin.display(description=_("Last error"))
    def last_error_hidden(self, obj: Connection) -> str:
        # What a private host answered is not shown to tenant staff: the portal must not become a way to read
        # an intranet service.
        return (
            _("An error occurred (hidden: the target is on a private network; the operator sees it).")
            if (obj.last_error)
            else ""
        )

    def chosen_provider(self, request: HttpRequest | None, obj: Connection | None) -> str | None:
        """The connection's provider; on the add page, the one picked (?provider=, or the posted form)."""
        if obj is not None:
            return obj.provider
        if request is None:
            return None
        # The add page reloads with ?provider= once one is picked; its form posts back to the same address.
        wanted = request.GET.get("provider", "")
        return wanted if SIDES.get(wanted) == self.model.SIDE else None

    def slots_for(self, obj: Connection | None, request: HttpRequest | None = None) -> list[SecretSlot]:
        return secret_slots(self.model.SIDE, self.chosen_provider(request, obj))

    def get_fieldsets(self, request: HttpRequest, obj: Connection | None = None) -> list[Any]:
        writable = self.has_change_permission(request, obj) if obj else self.has_add_permission(request)
        provider = self.chosen_provider(request, obj)
        if writable:
            secret_fields: list[str] = []
            for slot in self.slots_for(obj, request):
                secret_fields.append(SECRET_PREFIX + slot.name)
                if slot.issued:
                    secret_fields.append(GENERATE_PREFIX + slot.name)
        else:
            secret_fields = ["secrets_status"]
        providers = [provider] if provider else [k for k, s in SIDES.items() if s == self.model.SIDE]
        settings_help = format_html_join(
            "",
            "<p><strong>{}</strong>: {}</p>",
            ((LABELS[p], describe_fields(provider_class(p).settings_fields) or "—") for p in providers),
        )
        if writable and provider:
            generated = [
                settings_form.SETTING_PREFIX + f.name for f in provider_class(provider).settings_fields
            ]
            settings_sets: list[Any] = [
                (_("Settings"), {"fields": generated}),
                (
                    _("Settings as JSON (advanced)"),
                    {
                        "fields": ["settings_as_json", "settings"],
                        "classes": ["collapse"],
                        "description": settings_help,
                    },
                ),
            ]
        else:
            description = settings_help
            if writable:
                description = format_html(
                    "<p>{}</p>{}",
                    _("Pick the provider first: its settings then appear as form fields."),
                    settings_help,
                )
            settings_sets = [(_("Settings"), {"fields": ["settings"], "description": description})]
        fieldsets: list[Any] = [
            (None, {"fields": list(self.main_fields)}),
            *settings_sets,
            (
                _("Secrets"),
                {
                    "fields": secret_fields,
                    "description": secrets_help(writable, new=obj is None),
                },
            ),
        ]
        fieldsets.append((_("Network"), {"fields": ["allowed_networks"]}))
        if obj is not None:
            fieldsets.append((_("Inbound URLs"), {"fields": ["inbound_urls_display", "public_id"]}))
            error_field = (
                "last_error_hidden"
                if "last_error_hidden" in self.get_readonly_fields(request, obj)
                else "last_error"
            )
            fieldsets.append((_("Last error"), {"fields": [error_field, "last_error_at"]}))
        return fieldsets

    def get_form(
        self, request: HttpRequest, obj: Connection | None = None, change: bool = False, **kwargs: Any
    ):
        provider = self.chosen_provider(request, obj)
        kwargs["form"] = connection_form_class(self.model, self.slots_for(obj, request), provider)
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request: HttpRequest, obj: Connection, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        for name in getattr(form, "generated", ()):
            announce_token(request, obj, name)
        if obj.SIDE == CRM:
            request_crm_sync(obj.tenant_id)  # settings or client_id changed: the CRM's copy follows

    # ---- displays ----
    @admin.display(description=_("Error"), boolean=True)
    def error_flag(self, obj: Connection) -> bool:
        return bool(obj.last_error)

    @admin.display(description=_("Inbound URLs"))
    def inbound_urls_display(self, obj: Connection) -> SafeString | str:
        if obj is None or not obj.pk:
            return _("Shown once the connection is saved.")
        urls = obj.inbound_urls()
        base = urls.pop("base", None)
        paste = ""
        if base:
            paste = format_html(
                "<p>Paste this into the {} cabinet (it appends its own suffixes):<br><code>{}</code></p>",
                LABELS.get(obj.provider, obj.provider),
                base,
            )
        listed = format_html_join("", "<li>{}: <code>{}</code></li>", urls.items())
        return format_html("{}<ul>{}</ul>", paste, listed)

    @admin.display(description=_("Secrets"))
    def secrets_status(self, obj: Connection) -> str:
        if obj is None or not obj.pk:
            return "—"
        stored = obj.secrets or {}
        return "; ".join(
            f"{f.name}: {_('stored') if stored.get(f.name) else _('not set')}"
            for f in obj.provider_cls.secret_fields
        )

    # ---- reveal and regenerate issued tokens ----
    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        custom = [
            path(
                "<path:object_id>/secrets/<str:name>/reveal/",
                self.admin_site.admin_view(self.reveal_secret_view),
                name="{}_{}_reveal_secret".format(*info),
            ),
            path(
                "<path:object_id>/secrets/<str:name>/regenerate/",
                self.admin_site.admin_view(self.regenerate_secret_view),
                name="{}_{}_regenerate_secret".format(*info),
            ),
            path(
                "<path:object_id>/operations/<str:kind>/",
                self.admin_site.admin_view(self.operation_view),
                name="{}_{}_operation".format(*info),
            ),
            path(
                "<path:object_id>/provider-page/",
                self.admin_site.admin_view(self.provider_page_view),
                name="{}_{}_provider_page".format(*info),
            ),
        ]
        return custom + super().get_urls()

    def issued_secret_tools(self, request: HttpRequest, obj: Connection) -> list[dict[str, str]]:
        if not self.has_change_permission(request, obj):
            return []
        info = self.opts.app_label, self.opts.model_name
        return [
            {
                "name": name,
                "reveal_url": reverse("admin:{}_{}_reveal_secret".format(*info), args=[obj.pk, name]),
                "regenerate_url": reverse("admin:{}_{}_regenerate_secret".format(*info), args=[obj.pk, name]),
            }
            for name in obj.provider_cls.issued_secrets()
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Connection | None = None,
    ) -> HttpResponse:
        context["issued_secret_tools"] = self.issued_secret_tools(request, obj) if obj is not None else []
        if obj is not None:
            context["background"] = self.background_panel(request, obj)
        if obj is not None and obj.provider_cls.admin_page:
            info = self.opts.app_label, self.opts.model_name
            context["provider_page"] = {
                "url": reverse("admin:{}_{}_provider_page".format(*info), args=[obj.pk]),
                "title": obj.provider_cls.admin_page_title or _("Provider page"),
            }
        return super().render_change_form(request, context, add, change, form_url, obj)

    # ---- background operations: Test connection, directory import, the provider's own ----
    def background_panel(self, request: HttpRequest, obj: Connection) -> dict[str, Any]:
        """The connection page's operations: a button each (for those who may operate) and the latest run of
        each with its progress or result and time. What a private host answered stays hidden from tenant staff."""
        info = self.opts.app_label, self.opts.model_name
        may_run = self.has_operate_permission(request) and bool(
            self.operable_queryset(request, self.model.objects.filter(pk=obj.pk)).exists()
        )
        hidden = not is_superuser(request) and obj.reaches_private_network()
        latest = {op.kind: op for op in background.latest(obj)}
        rows = []
        for kind in background.kinds_for(obj):
            operation = latest.get(kind)
            rows.append(
                {
                    "kind": kind,
                    "label": background.label(kind),
                    "url": reverse("admin:{}_{}_operation".format(*info), args=[obj.pk, kind]),
                    "operation": operation,
                    "when": tenant_time(
                        operation and (operation.finished_at or operation.created_at),
                        obj.tenant,
                        seconds=True,
                    ),
                    "hidden": hidden,
                }
            )
        return {
            "rows": rows,
            "may_run": may_run,
            "busy": any(r["operation"] and not r["operation"].finished for r in rows),
            "receive_only": not obj.provider_cls.check_sends_request,
        }

    def operation_view(self, request: HttpRequest, object_id: str, kind: str) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))  # None outside the user's tenants
        if obj is None:
            raise Http404
        if request.method != "POST":
            return HttpResponseRedirect(
                reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk])
            )
        if not self.operable_queryset(request, self.model.objects.filter(pk=obj.pk)).exists():
            raise PermissionDenied
        if kind not in background.kinds_for(obj):
            raise Http404
        background.queue(obj, kind, request.user)
        self.message_user(
            request,
            _("%(operation)s queued: the result appears on this page in a few seconds.")
            % {"operation": background.label(kind)},
        )
        return HttpResponseRedirect(
            reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk])
        )

    def queue_for_selected(self, request: HttpRequest, queryset: QuerySet, kind: str) -> None:
        queued = 0
        for connection in self.operable_queryset(request, queryset).select_related("tenant"):
            if kind in background.kinds_for(connection):
                background.queue(connection, kind, request.user)
                queued += 1
        self.message_user(
            request,
            _("%(operation)s queued for %(count)s connection(s): each connection's page shows the result.")
            % {"operation": background.label(kind), "count": queued},
        )

    @admin.action(description=_("Test connection"), permissions=["operate"])
    def test_connection(self, request: HttpRequest, queryset: QuerySet) -> None:
        self.queue_for_selected(request, queryset, background.CHECK)

    def provider_page_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The provider's own page for one connection (Provider.admin_page), e.g. the sandbox CRM's inbox."""
        obj = self.get_object(request, unquote(object_id))  # None outside the user's tenants
        if obj is None or not obj.provider_cls.admin_page:
            raise Http404(_("This connection's provider has no page of its own."))
        return import_string(obj.provider_cls.admin_page)(request, obj, self)

    def _issued_secret_target(self, request: HttpRequest, object_id: str, name: str) -> Connection:
        obj = self.get_object(request, unquote(object_id))  # 404 outside the user's tenants
        if name not in obj.provider_cls.issued_secrets():
            # A secret the provider issued is write-only: there is nothing to reveal or regenerate here.
            raise Http404(_("Only tokens the portal issues can be revealed or regenerated."))
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        return obj

    def _secret_page(self, request: HttpRequest, obj: Connection, name: str, **extra: Any) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": obj,
            "secret_name": name,
            "provider_label": LABELS.get(obj.provider, obj.provider),
            "change_url": reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk]
            ),
            **extra,
        }
        response = TemplateResponse(request, self.secret_template, context)
        add_never_cache_headers(response)
        return response

    def reveal_secret_view(self, request: HttpRequest, object_id: str, name: str) -> HttpResponse:
        obj = self._issued_secret_target(request, object_id, name)
        token = (obj.secrets or {}).get(name, "")
        if token:
            self.log_change(request, obj, f"Revealed {name}.")  # who saw it; never the value
        return self._secret_page(
            request,
            obj,
            name,
            title=_("%(name)s of %(connection)s") % {"name": name, "connection": obj},
            mode="reveal",
            token=token,
        )

    def regenerate_secret_view(self, request: HttpRequest, object_id: str, name: str) -> HttpResponse:
        obj = self._issued_secret_target(request, object_id, name)
        if request.method != "POST":
            return self._secret_page(
                request,
                obj,
                name,
                title=_("Regenerate %(name)s of %(connection)s?") % {"name": name, "connection": obj},
                mode="confirm",
            )
        obj.regenerate_secret(name)
        self.log_change(request, obj, f"Regenerated {name}.")
        announce_token(request, obj, name)
        if obj.SIDE == CRM:
            request_crm_sync(obj.tenant_id)  # RetailCRM's module must carry the new clientId
        return HttpResponseRedirect(
            reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk])
        )


def announce_token(request: HttpRequest, obj: Connection, name: str) -> None:
    """Show a token the portal just issued, once: the admin pastes it into the provider now."""
    messages.warning(
        request,
        format_html(
            str(
                _(
                    "New {} for {}: <code>{}</code> — paste it into {} now. It is not shown again here; "
                    "tenant admins can reveal it from the connection page."
                )
            ),
            name,
            obj,
            obj.secrets[name],
            LABELS.get(obj.provider, obj.provider),
        ),
    )


@admin.register(PbxConnection)
class PbxConnectionAdmin(ConnectionAdmin):
    actions = ["test_connection", "import_extensions", "send_test_call"]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        """The "Send test call" action is offered only where the user sees a PBX connection that plays them."""
        actions = super().get_actions(request)
        providers = self.get_queryset(request).values_list("provider", flat=True).distinct()
        if not any(provider_class(key).offers_test_call for key in providers if key in REGISTRY):
            actions.pop("send_test_call", None)
        return actions

    @admin.action(description=_("Send test call (sandbox PBX connections only)"), permissions=["operate"])
    def send_test_call(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Plays the `answered` scenario through a simulated PBX. Never offered for a real PBX connection: the
        tenant's real CRMs would receive an invented call."""
        from integrations.simulation import ScenarioError, default_options

        for connection in self.operable_queryset(request, queryset).select_related("tenant"):
            adapter = get_provider(connection)
            if not adapter.offers_test_call:
                self.message_user(
                    request,
                    _("%(connection)s: test calls are only for sandbox PBX connections; nothing was sent")
                    % {"connection": connection},
                    messages.ERROR,
                )
                continue
            try:
                report = adapter.send_test_call("answered", default_options(connection.tenant))
            except (ScenarioError, ProviderError) as exc:
                self.message_user(request, f"{connection}: {exc}", messages.ERROR)
                continue
            self.message_user(request, f"{connection}: {report}")

    @admin.action(description=_("Import extensions from PBX"), permissions=["operate"])
    def import_extensions(self, request: HttpRequest, queryset: QuerySet) -> None:
        # Up to ~13 s per PBX request: a worker runs it (integrations/background.py).
        self.queue_for_selected(request, queryset, background.IMPORT_EXTENSIONS)


@admin.register(CrmConnection)
class CrmConnectionAdmin(ConnectionAdmin):
    list_display = ("__str__", "tenant", "provider", "priority", "active", "error_flag")
    main_fields = ("tenant", "key", "provider", "active", "priority")
    actions = ["test_connection"]

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        return [*super().get_readonly_fields(request, obj), "crm_proposals_display"]

    def get_fieldsets(self, request: HttpRequest, obj: Connection | None = None) -> list[Any]:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and getattr(obj, "crm_proposals", None):
            fieldsets.append((_("Proposals from the CRM"), {"fields": ["crm_proposals_display"]}))
        return fieldsets

    @admin.display(description=_("Entered in the CRM, not mapped here"))
    def crm_proposals_display(self, obj: CrmConnection) -> str:
        """What users entered in RetailCRM for extensions or phones the portal does not map (allow_crm_edits):
        kept in RetailCRM; "Import mappings edited in RetailCRM" adopts them."""
        return "; ".join(
            ", ".join(f"{k} {v}" for k, v in proposal.items()) for proposal in obj.crm_proposals or []
        )

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        """Every CRM provider's own operations (RetailCRM: register the module, read it back, propose
        mappings), offered to those who may operate; each runs on the selected connections of its provider."""
        actions = super().get_actions(request)
        if not self.has_operate_permission(request):
            return actions
        for key, side in SIDES.items():
            if side != CRM:
                continue
            for name, (description, _dotted) in provider_class(key).admin_operations.items():
                action_name = f"{key}_{name}"
                label = f"{LABELS[key]}: {description}"
                actions[action_name] = (self._operation(key, name), action_name, label)
        return actions

    def _operation(self, provider: str, name: str) -> Any:
        def run(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> None:
            # Each is one or more provider requests: a worker runs them (integrations/background.py).
            self.queue_for_selected(request, queryset.filter(provider=provider), f"{provider}:{name}")

        return run


class CrmSyncOnChangeMixin:
    """Any change saved or deleted here alters what a CRM holds a copy of (RetailCRM's additionalCodes and
    externalPhones): ask the tenant's CRMs to sync (integrations/crm_sync.py)."""

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)  # type: ignore[misc]
        request_crm_sync(form.instance.tenant_id)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        tenant_id = obj.tenant_id
        super().delete_model(request, obj)  # type: ignore[misc]
        request_crm_sync(tenant_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        tenant_ids = set(queryset.values_list("tenant_id", flat=True))
        super().delete_queryset(request, queryset)  # type: ignore[misc]
        for tenant_id in tenant_ids:
            request_crm_sync(tenant_id)


# ---------------------------------------------------------------------------------------------------------
# Extensions and external phones
# ---------------------------------------------------------------------------------------------------------


class ExtensionMappingInline(TenantScopedInlineMixin, admin.TabularInline):
    model = ExtensionMapping
    fields = ("crm_connection", "crm_user_id", "status", "status_at")
    readonly_fields = ("status", "status_at")
    extra = 0
    verbose_name_plural = _("CRM users")


@admin.register(Extension)
class ExtensionAdmin(CrmSyncOnChangeMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = ("number", "name", "kind", "sip_login", "email", "tenant", "crm_users")
    list_filter = (("tenant", RelatedOnlyFieldListFilter), "kind")
    search_fields = ("number", "name", "email", "sip_login")
    list_select_related = ("tenant",)
    fields = ("tenant", "number", "name", "kind", "sip_login", "email")
    inlines = [ExtensionMappingInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("mappings__crm_connection")

    @admin.display(description=_("CRM users"))
    def crm_users(self, obj: Extension) -> str:
        return ", ".join(f"{m.crm_connection.key}: {m.crm_user_id}" for m in obj.mappings.all()) or "—"


class SiteCodeInline(TenantScopedInlineMixin, admin.TabularInline):
    model = ExternalPhoneSiteCode
    fields = ("crm_connection", "code")
    extra = 0
    verbose_name_plural = _("Site codes per CRM connection")


@admin.register(ExternalPhone)
class ExternalPhoneAdmin(CrmSyncOnChangeMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = ("number", "label", "tenant", "site_codes_summary")
    list_filter = (("tenant", RelatedOnlyFieldListFilter),)
    search_fields = ("number", "label")
    list_select_related = ("tenant",)
    fields = ("tenant", "number", "label")
    inlines = [SiteCodeInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("site_codes__crm_connection")

    @admin.display(description=_("Site codes"))
    def site_codes_summary(self, obj: ExternalPhone) -> str:
        return site_codes_text(obj)


def site_codes_text(phone: ExternalPhone) -> str:
    if not phone.pk:
        return "—"
    return ", ".join(f"{c.crm_connection.key}: {c.code}" for c in phone.site_codes.all()) or "—"


# ---------------------------------------------------------------------------------------------------------
# Tenants and memberships
# ---------------------------------------------------------------------------------------------------------


class ConnectionSummaryInline(TenantScopedInlineMixin, admin.TabularInline):
    """A line per connection with a link to its own page, where settings and secrets are edited."""

    allow_add = False
    can_delete = False
    extra = 0
    show_change_link = True

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> Any:
        return self.fields


class PbxSummaryInline(ConnectionSummaryInline):
    model = PbxConnection
    fields = ("key", "provider", "active", "last_error")
    verbose_name_plural = _("PBX connections")


class CrmSummaryInline(ConnectionSummaryInline):
    model = CrmConnection
    fields = ("key", "provider", "priority", "active", "last_error")
    verbose_name_plural = _("CRM connections")


class ExtensionInline(TenantScopedInlineMixin, admin.TabularInline):
    model = Extension
    fields = ("number", "name", "kind", "email")
    extra = 0
    show_change_link = True  # CRM user mappings are edited on the extension's page


class ExternalPhoneInline(TenantScopedInlineMixin, admin.TabularInline):
    model = ExternalPhone
    fields = ("number", "label", "site_codes")
    readonly_fields = ("site_codes",)
    extra = 0
    show_change_link = True  # site codes are edited on the phone's page

    @admin.display(description=_("Site codes"))
    def site_codes(self, obj: ExternalPhone) -> str:
        return site_codes_text(obj)


class CommaListField(forms.CharField):
    """A short list typed as "RU, KZ" or "10.20.0.0/16, 192.168.5.10" (a JSON editor would be a trap)."""

    def __init__(self, *args: Any, upper: bool = False, **kwargs: Any) -> None:
        self.upper = upper
        super().__init__(*args, **kwargs)

    def prepare_value(self, value: Any) -> Any:
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:
        text = super().to_python(value) or ""
        items = [item.strip() for item in text.replace(";", ",").split(",") if item.strip()]
        return [item.upper() for item in items] if self.upper else items


class TenantForm(forms.ModelForm):
    click_to_call_regions = CommaListField(
        upper=True,
        required=False,
        label=_("Click-to-call regions"),
        help_text=Tenant._meta.get_field("click_to_call_regions").help_text + " Comma-separated.",
    )

    class Meta:
        model = Tenant
        fields = ["click_to_call_regions"]


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    tenant_path = ""
    list_display = ("name", "slug", "region", "time_zone", "active", "connections")
    list_filter = ("active",)
    search_fields = ("name", "slug")
    form = TenantForm
    fields = (
        "name",
        "slug",
        "region",
        "time_zone",
        "retention_days",
        "call_retention_days",
        "click_to_call_regions",
        "active",
        "add_connection_links",
    )
    readonly_fields = ("add_connection_links",)
    inlines = [
        MembershipInline,
        PbxSummaryInline,
        CrmSummaryInline,
        ExtensionInline,
        ExternalPhoneInline,
    ]

    change_form_template = "admin/integrations/tenant/change_form.html"

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if any(fs.model in (Extension, ExternalPhone) and fs.has_changed() for fs in formsets):
            request_crm_sync(form.instance.pk)

    # ---- the tenant file: download, upload with a dry-run diff (integrations/admin_tenant_file.py) ----
    def get_urls(self) -> list[Any]:
        custom = [
            path(
                "<path:object_id>/tenant-file/",
                self.admin_site.admin_view(self.download_file_view),
                name="integrations_tenant_file_download",
            ),
            path(
                "<path:object_id>/tenant-file/upload/",
                self.admin_site.admin_view(self.upload_file_view),
                name="integrations_tenant_file_upload",
            ),
        ]
        return custom + super().get_urls()

    def download_file_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        tenant = self.get_object(request, unquote(object_id))  # None outside the user's tenants
        if tenant is None:
            raise Http404
        return tenant_file_page.download(tenant)

    def upload_file_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        tenant = self.get_object(request, unquote(object_id))
        if tenant is None:
            raise Http404
        if not self.has_change_permission(request, tenant):
            raise PermissionDenied
        form, result = tenant_file_page.upload_view(request, tenant)
        applied = bool(request.method == "POST" and request.POST.get("apply") and result and result.ok)
        if applied:
            self.log_change(request, tenant, "Uploaded a tenant file.")
            self.message_user(
                request,
                _("Tenant file applied: %(changes)s")
                % {"changes": "; ".join(result.changes) or _("nothing changed")},
            )
            return HttpResponseRedirect(reverse("admin:integrations_tenant_change", args=[tenant.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": tenant,
            "title": _("Upload a tenant file for %(tenant)s") % {"tenant": tenant},
            "form": form,
            "result": result,
            "change_url": reverse("admin:integrations_tenant_change", args=[tenant.pk]),
        }
        return TemplateResponse(request, "admin/integrations/tenant/upload.html", context)

    # Creating and deleting whole tenants is the operator's job; tenant admins configure their own.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return is_superuser(request)

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if not is_superuser(request):
            # The slug names the tenant in files and URLs: a tenant admin renaming theirs could squat another
            # customer's slug before import_tenant creates it.
            fields.append("slug")
        return fields

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        for member_form in formset.forms:
            invited = getattr(member_form, "invitation", None)
            if invited:
                messages.info(request, announce(request, form.instance, *invited))

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return is_superuser(request)

    @admin.display(description=_("Connections"))
    def connections(self, obj: Tenant) -> str:
        connections = [*PbxConnection.objects.filter(tenant=obj), *CrmConnection.objects.filter(tenant=obj)]
        names = [f"{c.key} ({c.provider})" for c in connections]
        return ", ".join(names) or "—"

    @admin.display(description=_("Add a connection"))
    def add_connection_links(self, obj: Tenant) -> SafeString | str:
        if obj is None or not obj.pk:
            return "—"
        return format_html(
            '<a href="{}?tenant={}" id="add-pbx-connection">{}</a> · <a href="{}?tenant={}" id="add-crm-connection">{}</a>',
            reverse("admin:integrations_pbxconnection_add"),
            obj.pk,
            _("PBX connection"),
            reverse("admin:integrations_crmconnection_add"),
            obj.pk,
            _("CRM connection"),
        )


@admin.register(TenantMembership)
class TenantMembershipAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    form = MembershipForm

    def get_form(
        self, request: HttpRequest, obj: Model | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if not is_superuser(request):
            kwargs["form"] = EmailMembershipForm
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        invited = getattr(form, "invitation", None)
        if invited:
            messages.info(request, announce(request, obj.tenant, *invited))

    list_display = ("user_display", "email", "tenant", "role")
    list_filter = (("tenant", RelatedOnlyFieldListFilter), "role")
    search_fields = ("user__username", "user__email")
    list_select_related = ("tenant", "user")

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        if obj is None and not is_superuser(request):
            return ["tenant", "role", "email"]
        if obj is None:
            return ["tenant", "role", "user_lookup", "new_username", "new_email", "new_password"]
        return ["tenant", "user_display", "role"]

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        return ["tenant", "user_display"] if obj is not None else ["user_display"]

    @admin.display(description=_("User"))
    def user_display(self, obj: TenantMembership) -> str:
        return member_label(obj)

    @admin.display(description=_("E-mail"))
    def email(self, obj: TenantMembership) -> str:
        return obj.user.email
