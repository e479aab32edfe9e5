"""Tenants, their PBX and CRM connections, extensions and external phones."""

from __future__ import annotations

import ipaddress
import secrets as pysecrets
import zoneinfo
from contextlib import AbstractContextManager
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from integrations.crypto import EncryptedJSONField
from integrations.phones import InvalidPhone, to_e164
from integrations.providers.base import (
    CRM,
    GENERATE,
    PBX,
    SchemaError,
    get_provider,
    provider_choices,
    provider_class,
    public_base_url,
)

slug_validator = RegexValidator(r"^[a-z0-9][a-z0-9_-]{0,49}$", "Lower-case letters, digits, '-' and '_'.")
extension_validator = RegexValidator(r"^\d{2,6}$", "An extension is 2 to 6 digits.")


def new_public_id() -> str:
    """The unguessable id in a connection's inbound URLs (≥ 128 random bits)."""
    return pysecrets.token_urlsafe(18)


def validate_time_zone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(_("Unknown time zone %(value)s.") % {"value": repr(value)}) from None


def validate_region(value: str) -> None:
    import phonenumbers

    if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ValidationError(_("Unknown phone region %(value)s.") % {"value": repr(value)})


def validate_regions(value: Any) -> None:
    import phonenumbers

    if not isinstance(value, list) or not all(isinstance(code, str) for code in value):
        raise ValidationError(_('A list of region codes such as ["RU", "KZ"] is expected.'))
    unknown = [code for code in value if code.upper() not in phonenumbers.SUPPORTED_REGIONS]
    if unknown:
        raise ValidationError(_("Unknown phone region(s): %(codes)s.") % {"codes": ", ".join(unknown)})


def validate_networks(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError(_('A list of CIDRs such as ["10.20.0.0/16"] is expected.'))
    for item in value:
        try:
            ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ValidationError(_("Not a network: %(value)s.") % {"value": repr(item)}) from None


class TenantQuerySet(models.QuerySet):
    def for_user(self, user: Any, roles: tuple[str, ...] = ("admin", "support")) -> TenantQuerySet:
        if user.is_superuser:
            return self
        return self.filter(memberships__user=user, memberships__role__in=roles).distinct()


class Tenant(models.Model):
    name = models.CharField(max_length=200, verbose_name=_("name"))
    slug = models.SlugField(max_length=50, unique=True, validators=[slug_validator], verbose_name=_("slug"))
    region = models.CharField(
        max_length=2,
        default="RU",
        validators=[validate_region],
        help_text=_("Region for parsing phone numbers."),
        verbose_name=_("region"),
    )
    time_zone = models.CharField(
        max_length=64, default="Europe/Moscow", validators=[validate_time_zone], verbose_name=_("time zone")
    )
    retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=_("Delete recordings this many days after the call. Blank: keep forever."),
        verbose_name=_("retention days"),
    )
    call_retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=_(
            "Delete calls (phone numbers are personal data) with their events, routing decisions, "
            "click-to-call requests, job attempts, recordings and playback logs this many days after the call. "
            "Blank: keep everything."
        ),
        verbose_name=_("call retention days"),
    )
    click_to_call_regions = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_regions],
        help_text=_(
            "Click-to-call may dial numbers of these regions only (ISO 3166 codes such as RU, KZ). "
            "Blank: the tenant's region. Premium-rate and shared-cost numbers are always refused."
        ),
        verbose_name=_("click to call regions"),
    )
    active = models.BooleanField(default=True, verbose_name=_("active"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = _("tenant")
        verbose_name_plural = _("tenants")

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        # Stored upper-case and without repeats, so the comparison with libphonenumber's regions is exact.
        self.click_to_call_regions = list(
            dict.fromkeys(str(code).strip().upper() for code in self.click_to_call_regions or [])
        )

    @property
    def allowed_call_regions(self) -> set[str]:
        """Where click-to-call may dial: the configured regions, else the tenant's own."""
        return {code.upper() for code in self.click_to_call_regions or []} or {self.region.upper()}

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    def active_pbx(self) -> PbxConnection | None:
        return self.pbxconnections.filter(active=True).first()

    def active_crms(self) -> models.QuerySet[CrmConnection]:
        return self.crmconnections.filter(active=True).order_by("priority", "id")


class TenantMembership(models.Model):
    ADMIN = "admin"
    SUPPORT = "support"
    ROLES = [(ADMIN, _("Admin (configures the tenant)")), (SUPPORT, _("Support (reads call history)"))]

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("tenant")
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="tenant_memberships",
        verbose_name=_("user"),
    )
    role = models.CharField(max_length=10, choices=ROLES, default=SUPPORT, verbose_name=_("role"))

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="unique_membership")]
        verbose_name = _("membership")
        verbose_name_plural = _("memberships")

    def __str__(self) -> str:
        # By e-mail, as tenant admins add members: a username would tell whether the address had a login already.
        return f"{self.user.email or self.user} @ {self.tenant} ({self.role})"


class Connection(models.Model):
    """One account at one provider. Settings are validated by the provider's schema; secrets are encrypted."""

    SIDE: str = ""

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="%(class)ss", verbose_name=_("tenant")
    )
    key = models.CharField(
        max_length=50,
        validators=[slug_validator],
        help_text=_("Names the connection inside its tenant."),
        verbose_name=_("key"),
    )
    provider = models.CharField(max_length=30, verbose_name=_("provider"))
    active = models.BooleanField(default=True, verbose_name=_("active"))
    settings = models.JSONField(default=dict, blank=True, verbose_name=_("settings"))
    secrets = EncryptedJSONField(default=dict, blank=True, verbose_name=_("secrets"))
    public_id = models.CharField(
        max_length=64, unique=True, default=new_public_id, editable=False, verbose_name=_("public id")
    )
    allowed_networks = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_networks],
        help_text=_(
            "Private networks (CIDRs) this connection alone may reach, e.g. an intranet PBX; besides "
            "the operator's OUTBOUND_ALLOWED_NETWORKS. Only superusers change it."
        ),
        verbose_name=_("allowed networks"),
    )
    last_error = models.TextField(blank=True, verbose_name=_("last error"))
    last_error_at = models.DateTimeField(null=True, blank=True, verbose_name=_("last error at"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.key} ({self.provider})"

    @property
    def provider_cls(self) -> Any:
        return provider_class(self.provider)

    @property
    def adapter(self) -> Any:
        return get_provider(self)

    def clean(self) -> None:
        if self.provider not in dict(provider_choices(self.SIDE)):
            raise ValidationError({"provider": f"Unknown {self.SIDE.upper()} provider {self.provider!r}."})
        try:
            self.settings = self.provider_cls.clean_settings(self.settings)
        except SchemaError as exc:
            raise ValidationError({"settings": str(exc)}) from None
        secrets = dict(self.secrets or {})
        for name in self.provider_cls.issued_secrets():
            if secrets.get(name) == GENERATE:
                secrets[name] = self.provider_cls.new_secret(name)
        try:
            self.secrets = self.provider_cls.clean_secrets(secrets)
        except SchemaError as exc:
            raise ValidationError({"secrets": str(exc)}) from None
        self.allowed_networks = [
            str(ipaddress.ip_network(item.strip(), strict=False)) for item in self.allowed_networks or []
        ]
        self._check_credential_urls()

    def _check_credential_urls(self) -> None:
        """A URL that carries credentials must be https, unless it points into an allowed private network."""
        from integrations import http

        with self.outbound_scope():
            for name, url in self.credential_urls().items():
                problem = http.credential_url_problem(url)
                if problem:
                    field, key = name.split(".", 1)
                    raise ValidationError({field: f"{key}: {problem}"})

    def outbound_scope(self) -> AbstractContextManager[None]:
        """Wrap the outbound work done for this connection: its allowed_networks become reachable inside."""
        from integrations import http

        return http.connection_networks(self.allowed_networks or [])

    def credential_urls(self) -> dict[str, str]:
        """Every http(s) URL among the settings and secrets: each carries or receives credentials."""
        values = {**{f"settings.{k}": v for k, v in (self.settings or {}).items()}}
        values.update({f"secrets.{k}": v for k, v in (self.secrets or {}).items()})
        return {
            name: value
            for name, value in values.items()
            if isinstance(value, str) and value.lower().startswith(("http://", "https://"))
        }

    def reaches_private_network(self) -> bool:
        """Whether this connection talks to a private address (its allowed_networks, or a URL whose host is
        private): then what those hosts answer is not shown to tenant staff, so the portal cannot be used to
        read an intranet service through error bodies."""
        from django.conf import settings

        from integrations import http

        if self.allowed_networks:
            return True
        if not (settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS or settings.OUTBOUND_ALLOWED_NETWORKS):
            # The SSRF guard let no request reach a private address, so nothing a private host said was
            # stored: no name needs resolving.
            return False
        return any(http.is_private_target(url) for url in self.credential_urls().values())

    def inbound_urls(self) -> dict[str, str]:
        base = f"{public_base_url()}/hooks/{self.provider}/{self.public_id}/"
        urls = {}
        if self.provider_cls.base_url_is_configured:
            urls["base"] = base
        for suffix in self.provider_cls.inbound_paths:
            urls[suffix or "url"] = base + suffix
        return urls

    def flag_error(self, message: str) -> None:
        """Show a permanent problem to the admin (wrong key, revoked link)."""
        type(self).objects.filter(pk=self.pk).update(last_error=message[:2000], last_error_at=timezone.now())
        self.last_error, self.last_error_at = message[:2000], timezone.now()

    def regenerate_secret(self, name: str) -> str:
        if name not in self.provider_cls.issued_secrets():
            raise ValueError(f"{name} is not a token the portal issues")
        token = self.provider_cls.new_secret(name)
        self.secrets = {**self.secrets, name: token}
        self.save(update_fields=["secrets", "updated_at"])
        return token


class PbxConnection(Connection):
    SIDE = PBX

    provider = models.CharField(max_length=30, choices=provider_choices(PBX), verbose_name=_("provider"))

    class Meta:
        verbose_name = _("PBX connection")
        verbose_name_plural = _("PBX connections")
        constraints = [
            models.UniqueConstraint(fields=["tenant", "key"], name="unique_pbx_key"),
            models.UniqueConstraint(
                fields=["tenant"], condition=Q(active=True), name="one_active_pbx_per_tenant"
            ),
        ]

    def clean(self) -> None:
        super().clean()
        if self.active and self.tenant_id:
            others = PbxConnection.objects.filter(tenant_id=self.tenant_id, active=True).exclude(pk=self.pk)
            if others.exists():
                raise ValidationError({"active": _("This tenant already has an active PBX connection.")})


class CrmConnection(Connection):
    SIDE = CRM

    provider = models.CharField(max_length=30, choices=provider_choices(CRM), verbose_name=_("provider"))
    priority = models.PositiveIntegerField(
        default=10,
        help_text=_("Routing asks CRMs in this order: a lower number is asked first."),
        verbose_name=_("priority"),
    )
    crm_proposals = models.JSONField(
        default=list,
        blank=True,
        help_text=_(
            "Mappings entered in the CRM that the portal does not have (RetailCRM with allow_crm_edits), "
            "kept there and listed here at the last registration."
        ),
        verbose_name=_("crm proposals"),
    )

    class Meta:
        verbose_name = _("CRM connection")
        verbose_name_plural = _("CRM connections")
        ordering = ["priority", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "key"], name="unique_crm_key")]


class Extension(models.Model):
    """An employee's internal number at the PBX. Not a phone number: never parsed as one."""

    USER = "user"
    GROUP = "group"
    KINDS = ((USER, _("employee")), (GROUP, _("group")))

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="extensions", verbose_name=_("tenant")
    )
    number = models.CharField(max_length=6, validators=[extension_validator], verbose_name=_("number"))
    name = models.CharField(max_length=200, blank=True, verbose_name=_("name"))
    email = models.EmailField(blank=True, verbose_name=_("email"))
    # A group (a PBX hunt group with its own PIN) is a routing target only: it rings its members, is never
    # mapped to a CRM user and never answers a call itself.
    kind = models.CharField(max_length=10, choices=KINDS, default=USER, verbose_name=_("kind"))
    sip_login = models.CharField(
        max_length=100,
        blank=True,
        help_text=_(
            "The employee's SIP login at the PBX (Rostelecom users_info `name`): events that name the "
            "employee by login or SIP URI resolve to this extension."
        ),
        verbose_name=_("sip login"),
    )

    class Meta:
        ordering = ["number"]
        constraints = [models.UniqueConstraint(fields=["tenant", "number"], name="unique_extension")]
        verbose_name = _("extension")
        verbose_name_plural = _("extensions")

    def __str__(self) -> str:
        return f"{self.number} {self.name}".strip()


class ExtensionMapping(models.Model):
    """Extension ↔ a CRM user id, per CRM connection, with the user's last known status in that CRM."""

    extension = models.ForeignKey(
        Extension, on_delete=models.CASCADE, related_name="mappings", verbose_name=_("extension")
    )
    crm_connection = models.ForeignKey(
        CrmConnection, on_delete=models.CASCADE, related_name="mappings", verbose_name=_("crm connection")
    )
    crm_user_id = models.CharField(max_length=100, verbose_name=_("crm user id"))
    status = models.CharField(
        max_length=30,
        blank=True,
        help_text=_("Last status the CRM reported (free, busy…)."),
        verbose_name=_("status"),
    )
    status_at = models.DateTimeField(null=True, blank=True, verbose_name=_("status at"))

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["extension", "crm_connection"], name="unique_mapping"),
        ]
        verbose_name = _("CRM user mapping")
        verbose_name_plural = _("CRM user mappings")

    def __str__(self) -> str:
        return f"{self.extension.number} → {self.crm_connection.key}:{self.crm_user_id}"

    def clean(self) -> None:
        if (
            self.extension_id
            and self.crm_connection_id
            and self.extension.tenant_id != self.crm_connection.tenant_id
        ):
            raise ValidationError(_("The extension and the CRM connection belong to different tenants."))
        if self.extension_id and self.extension.kind == Extension.GROUP:
            raise ValidationError(_("A group is not an employee: it cannot be mapped to a CRM user."))


class ExternalPhone(models.Model):
    """A DID of the PBX, with a site/shop code per CRM connection (RetailCRM siteCode)."""

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="external_phones", verbose_name=_("tenant")
    )
    number = models.CharField(
        max_length=20, help_text=_("E.164; any common written form is accepted."), verbose_name=_("number")
    )
    label = models.CharField(max_length=200, blank=True, verbose_name=_("label"))

    class Meta:
        ordering = ["number"]
        constraints = [models.UniqueConstraint(fields=["tenant", "number"], name="unique_external_phone")]
        verbose_name = _("external phone")
        verbose_name_plural = _("external phones")

    def __str__(self) -> str:
        return f"{self.number} {self.label}".strip()

    def clean(self) -> None:
        region = self.tenant.region if self.tenant_id else "RU"
        try:
            self.number = to_e164(self.number, region)
        except InvalidPhone as exc:
            raise ValidationError({"number": str(exc)}) from None

    def site_code_for(self, crm_connection: CrmConnection) -> str:
        code = self.site_codes.filter(crm_connection=crm_connection).first()
        return code.code if code else ""


class ExternalPhoneSiteCode(models.Model):
    external_phone = models.ForeignKey(
        ExternalPhone, on_delete=models.CASCADE, related_name="site_codes", verbose_name=_("external phone")
    )
    crm_connection = models.ForeignKey(
        CrmConnection, on_delete=models.CASCADE, related_name="site_codes", verbose_name=_("crm connection")
    )
    code = models.CharField(max_length=100, verbose_name=_("code"))

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["external_phone", "crm_connection"], name="unique_site_code"),
        ]
        verbose_name = _("site code")
        verbose_name_plural = _("site codes")

    def __str__(self) -> str:
        return f"{self.crm_connection.key}: {self.code}"


class ConnectionOperation(models.Model):
    """One admin operation on a connection run by a worker, not inside the request: "Test connection", the
    PBX directory import, a CRM's own operations (RetailCRM register / read back). The connection page shows
    the latest of each kind with its progress, result and time (integrations/background.py)."""

    QUEUED, RUNNING, OK, FAILED = "queued", "running", "ok", "failed"
    STATUSES = [
        (QUEUED, _("queued")),
        (RUNNING, _("running")),
        (OK, _("done")),
        (FAILED, _("failed")),
    ]

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="connection_operations", verbose_name=_("tenant")
    )
    pbx_connection = models.ForeignKey(
        PbxConnection,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="operations",
        verbose_name=_("pbx connection"),
    )
    crm_connection = models.ForeignKey(
        CrmConnection,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="operations",
        verbose_name=_("crm connection"),
    )
    kind = models.CharField(_("operation"), max_length=60)
    status = models.CharField(_("status"), max_length=10, choices=STATUSES, default=QUEUED)
    progress = models.CharField(_("progress"), max_length=200, blank=True)
    # The requester's language: the worker writes the progress and the portal's own words in it.
    language = models.CharField(_("language"), max_length=10, blank=True)
    summary = models.TextField(_("result"), blank=True)
    detail = models.TextField(_("provider's answer"), blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("requested by"),
    )
    created_at = models.DateTimeField(_("requested at"), default=timezone.now)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("connection operation")
        verbose_name_plural = _("connection operations")
        indexes = [models.Index(fields=["status", "created_at"], name="operation_queue_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.connection} ({self.status})"

    @property
    def connection(self) -> PbxConnection | CrmConnection:
        return self.crm_connection if self.crm_connection_id else self.pbx_connection

    @property
    def finished(self) -> bool:
        return self.status in {self.OK, self.FAILED}
