"""The sandbox's far-end state: what the simulated PBX played, and the simulated CRM's inbox and routing table."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

from integrations.models import CrmConnection, PbxConnection, extension_validator
from integrations.phones import InvalidPhone, to_e164


class SandboxCall(models.Model):
    """A call the sandbox PBX played: its plan (integrations.simulation.Timeline.as_plan) is what the PBX
    answers call details, reconciliation and recordings from."""

    pbx_connection = models.ForeignKey(
        PbxConnection,
        on_delete=models.CASCADE,
        related_name="sandbox_calls",
        verbose_name=_("pbx connection"),
    )
    call_id = models.CharField(max_length=64, verbose_name=_("call id"))
    scenario = models.CharField(max_length=30, verbose_name=_("scenario"))
    plan = models.JSONField(default=dict, verbose_name=_("plan"))
    routed_extension = models.CharField(max_length=6, blank=True, verbose_name=_("routed extension"))
    routed_name = models.CharField(max_length=200, blank=True, verbose_name=_("routed name"))
    recording_ready_at = models.DateTimeField(null=True, blank=True, verbose_name=_("recording ready at"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["pbx_connection", "call_id"], name="unique_sandbox_call"),
        ]
        verbose_name = _("sandbox call")
        verbose_name_plural = _("sandbox calls")

    def __str__(self) -> str:
        return f"{self.call_id} ({self.scenario})"


class SandboxContact(models.Model):
    """One row of the sandbox CRM's routing table: a client phone, the client's name, the responsible
    extension."""

    crm_connection = models.ForeignKey(
        CrmConnection,
        on_delete=models.CASCADE,
        related_name="sandbox_contacts",
        verbose_name=_("crm connection"),
    )
    phone = models.CharField(
        max_length=20, help_text=_("E.164; any common written form is accepted."), verbose_name=_("phone")
    )
    name = models.CharField(max_length=200, blank=True, verbose_name=_("name"))
    extension = models.CharField(
        max_length=6, blank=True, validators=[extension_validator], verbose_name=_("extension")
    )

    class Meta:
        ordering = ["phone"]
        constraints = [
            models.UniqueConstraint(fields=["crm_connection", "phone"], name="unique_sandbox_contact"),
        ]
        verbose_name = _("sandbox contact")
        verbose_name_plural = _("sandbox contacts")

    def __str__(self) -> str:
        return f"{self.phone} {self.name}".strip()

    def clean(self) -> None:
        region = self.crm_connection.tenant.region if self.crm_connection_id else "RU"
        try:
            self.phone = to_e164(self.phone, region)
        except InvalidPhone as exc:
            raise ValidationError({"phone": str(exc)}) from None


class SandboxMessage(models.Model):
    """One message the portal sent the sandbox CRM (or one thing it did there), as the CRM would show it."""

    ROUTING, POPUP, COMPLETED, HISTORY, RECORDING, CLICK_TO_CALL = (
        "routing",
        "popup",
        "completed",
        "history",
        "recording",
        "click_to_call",
    )
    KINDS = [
        (ROUTING, _("Routing question")),
        (POPUP, _("Pop-up")),
        (COMPLETED, _("Call completed")),
        (HISTORY, _("History entry")),
        (RECORDING, _("Recording link")),
        (CLICK_TO_CALL, _("Click-to-call")),
    ]

    crm_connection = models.ForeignKey(
        CrmConnection,
        on_delete=models.CASCADE,
        related_name="sandbox_messages",
        verbose_name=_("crm connection"),
    )
    kind = models.CharField(max_length=20, choices=KINDS, verbose_name=_("kind"))
    pbx_call_id = models.CharField(max_length=200, blank=True, verbose_name=_("pbx call id"))
    extension = models.CharField(max_length=6, blank=True, verbose_name=_("extension"))
    text = models.CharField(max_length=500, verbose_name=_("text"))
    data = models.JSONField(default=dict, blank=True, verbose_name=_("data"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["crm_connection", "-created_at"])]
        verbose_name = _("sandbox message")
        verbose_name_plural = _("sandbox messages")

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.text}"
