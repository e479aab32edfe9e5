"""The call as the read API (and the `webhook` provider's events) show it.

Times are ISO 8601 with the tenant's UTC offset (`2026-11-24T13:00:05+03:00`), so a report shows local times
without knowing the tenant's zone; the offset still makes every value an exact instant.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from calls.events import KINDS, RESULTS
from calls.models import Call, CallEvent, OutboundJob, Recording
from integrations.exposure import shown_error

LINKED_RECORDING_STATES = (Recording.EXPECTED, Recording.FETCHING, Recording.STORED)


class TenantTimeField(serializers.DateTimeField):
    """A moment in the tenant's zone: `context["tz"]` (one tenant per request), else the call's tenant's."""

    def to_representation(self, value: dt.datetime | None) -> str | None:
        if value is None:
            return None
        tz = self.context.get("tz") or self.parent.tenant_tz(self.parent.instance_in_hand)
        return value.astimezone(tz).isoformat()


class TenantAwareSerializer(serializers.Serializer):
    instance_in_hand: Any = None

    def to_representation(self, instance: Any) -> dict[str, Any]:
        self.instance_in_hand = instance
        return super().to_representation(instance)

    @staticmethod
    def tenant_tz(instance: Any) -> dt.tzinfo:
        call = instance if isinstance(instance, Call) else instance.call
        return call.tenant.tz


def extensions_of(call: Call) -> list[str]:
    """Every extension that rang or answered (an outgoing call's caller first), each once, in order."""
    seen: list[str] = []
    candidates = [
        call.initiating_extension,
        *(call.rang_extensions or []),
        *(call.answered_extensions or []),
        call.first_answered_extension,
        call.last_answered_extension,
    ]
    for extension in candidates:
        if extension and extension not in seen:
            seen.append(str(extension))
    return seen


def responsible_extension(call: Call) -> str | None:
    """The last to answer, else the first that rang (else the one who dialled out)."""
    rang = call.rang_extensions or []
    return call.last_answered_extension or (rang[0] if rang else "") or call.initiating_extension or None


def recording_url(call: Call) -> str | None:
    """The permanent link from the moment a recording is expected (it answers 404 with Retry-After until the
    file is stored, the way CRMs already receive it); null when there is none, it is unavailable or purged."""
    try:
        recording = call.recording
    except Recording.DoesNotExist:
        return None
    return recording.public_url if recording.state in LINKED_RECORDING_STATES else None


class CallSerializer(TenantAwareSerializer):
    id = serializers.IntegerField()
    provider_call_id = serializers.CharField(help_text="The PBX's own id of the call.")
    direction = serializers.ChoiceField(
        choices=["in", "out", "internal"], allow_null=True, help_text="null while the PBX has not said."
    )
    result = serializers.ChoiceField(choices=list(RESULTS), allow_null=True, help_text="null: in progress.")
    client_phone = serializers.CharField(allow_null=True, help_text="E.164; null when the PBX gave none.")
    external_phone = serializers.CharField(allow_null=True, help_text="The DID (E.164).")
    extension = serializers.SerializerMethodField(help_text="The responsible extension.")
    extensions = serializers.SerializerMethodField(help_text="Every extension that rang or answered.")
    started_at = TenantTimeField(allow_null=True)
    answered_at = TenantTimeField(allow_null=True)
    ended_at = TenantTimeField(allow_null=True)
    wait_seconds = serializers.IntegerField(allow_null=True)
    talk_seconds = serializers.IntegerField(allow_null=True)
    recording_url = serializers.SerializerMethodField()

    def to_representation(self, instance: Call) -> dict[str, Any]:
        data = super().to_representation(instance)
        for name in ("direction", "result", "client_phone", "external_phone"):
            data[name] = data[name] or None  # "" in the database means "not known"
        return data

    @extend_schema_field({"type": "string", "nullable": True, "pattern": r"^\d{2,6}$"})
    def get_extension(self, call: Call) -> str | None:
        return responsible_extension(call)

    @extend_schema_field({"type": "array", "items": {"type": "string", "pattern": r"^\d{2,6}$"}})
    def get_extensions(self, call: Call) -> list[str]:
        return extensions_of(call)

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_recording_url(self, call: Call) -> str | None:
        return recording_url(call)


class EventSerializer(TenantAwareSerializer):
    kind = serializers.ChoiceField(choices=list(KINDS))
    time = TenantTimeField(source="occurred_at")
    extension = serializers.SerializerMethodField()
    leg = serializers.SerializerMethodField()

    @extend_schema_field({"type": "string", "nullable": True})
    def get_extension(self, event: CallEvent) -> str | None:
        return (event.normalised or {}).get("extension") or None

    @extend_schema_field({"type": "string", "nullable": True, "description": "The PBX's id of the leg."})
    def get_leg(self, event: CallEvent) -> str | None:
        return event.leg_id or None


class DeliverySerializer(TenantAwareSerializer):
    connection = serializers.CharField(source="crm_connection.key", help_text="The CRM connection's key.")
    kind = serializers.CharField()
    status = serializers.ChoiceField(choices=[s for s, _ in OutboundJob.STATUSES])
    attempts = serializers.IntegerField()
    last_error = serializers.SerializerMethodField()
    sent_at = TenantTimeField(allow_null=True)

    @extend_schema_field(OpenApiTypes.STR)
    def get_last_error(self, job: OutboundJob) -> str:
        return shown_error(job.crm_connection, job.last_error, job.last_status)

    @staticmethod
    def tenant_tz(instance: Any) -> dt.tzinfo:
        return instance.tenant.tz


class CallDetailSerializer(CallSerializer):
    events = serializers.SerializerMethodField()
    deliveries = serializers.SerializerMethodField()

    @extend_schema_field(EventSerializer(many=True))
    def get_events(self, call: Call) -> list[dict[str, Any]]:
        events = call.events.order_by("order_key", "id")
        return EventSerializer(events, many=True, context=self.context).data

    @extend_schema_field(DeliverySerializer(many=True))
    def get_deliveries(self, call: Call) -> list[dict[str, Any]]:
        jobs = (
            call.jobs.filter(crm_connection__isnull=False)
            .select_related("crm_connection", "tenant")
            .order_by("created_at", "id")
        )
        return DeliverySerializer(jobs, many=True, context=self.context).data


def call_data(call: Call) -> dict[str, Any]:
    """One call as `GET /api/v1/calls/` lists it (the shape the `webhook` provider's events carry)."""
    return dict(CallSerializer(call, context={"tz": call.tenant.tz}).data)
