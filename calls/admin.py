"""Call history for support staff: the call log, its event timeline, routing decisions and outbound jobs.

Everything here is read-only (the log records what happened); tenant admins may act on it through two
actions, "retry now" on failed or dead jobs and "resend to CRM" on calls. Scoping follows memberships, as in
integrations.admin_scoping: support and admins of a tenant see its calls, anyone else gets 404.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import RelatedOnlyFieldListFilter
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import PAGE_VAR
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponseBase, QueryDict
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from calls import exports, outbox, processor, recordings, services
from calls.models import (
    Call,
    CallEvent,
    JobAttempt,
    OriginateRequest,
    OutboundJob,
    PlaybackLog,
    Recording,
    RoutingDecision,
)
from calls.search import extension_condition, phone_condition
from calls.timeline import call_timeline
from integrations.admin_scoping import (
    ReadOnlyTenantInline,
    TenantScopedAdminMixin,
    is_superuser,
    readable_tenant_ids,
)
from integrations.localtime import tenant_time
from integrations.models import Tenant
from integrations.phones import is_extension

PHONE_PUNCTUATION = set("+-() .")
PLAYBACKS_SHOWN = 50  # on the call page; the full list is the playback log's own page


def scope_tenants(request: HttpRequest) -> QuerySet[Tenant]:
    tenants = Tenant.objects.order_by()
    return tenants if is_superuser(request) else tenants.filter(pk__in=readable_tenant_ids(request))


def pretty_json(value: Any) -> SafeString:
    return format_html("<pre style='margin:0; white-space:pre-wrap'>{}</pre>", json.dumps(value, indent=2))


# ---------------------------------------------------------------------------------------------------------
# List filters with typed inputs
# ---------------------------------------------------------------------------------------------------------


class InputFilter(admin.ListFilter):
    """A filter with text or date inputs; subclasses list them in `inputs` and implement `filter`."""

    template = "admin/callbridge/input_filter.html"
    inputs: ClassVar[tuple[tuple[str, str, str], ...]] = ()  # (query parameter, label, input type)

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        for name in self.expected_parameters():
            if name in params:
                value = params.pop(name)
                value = value[-1] if isinstance(value, list) else value
                if value.strip():
                    self.used_parameters[name] = value.strip()

    def expected_parameters(self) -> list[str]:
        return [name for name, _label, _type in self.inputs]

    def has_output(self) -> bool:
        return True

    def input_label(self, name: str, label: str) -> str:
        return label

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        names = self.expected_parameters()
        others = QueryDict(changelist.get_query_string(remove=[*names, PAGE_VAR]).lstrip("?"))
        yield {
            "selected": bool(self.used_parameters),
            "hidden": [(key, value) for key, values in others.lists() for value in values],
            "inputs": [
                {
                    "name": name,
                    "label": self.input_label(name, label),
                    "type": kind,
                    "value": self.used_parameters.get(name, ""),
                }
                for name, label, kind in self.inputs
            ],
            "clear_query_string": changelist.get_query_string(remove=names),
        }

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return self.filter(request, queryset) if self.used_parameters else queryset

    def filter(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        raise NotImplementedError


def scope_time_zone(request: HttpRequest) -> dt.tzinfo:
    """Dates mean the tenants' local days when every visible tenant shares one time zone."""
    zones = set(scope_tenants(request).values_list("time_zone", flat=True).distinct()[:2])
    if len(zones) == 1:
        return zoneinfo.ZoneInfo(zones.pop())
    return timezone.get_current_timezone()


class StartedAtRangeFilter(InputFilter):
    title = _("date")
    inputs = (("started_from", _("From"), "date"), ("started_to", _("To (inclusive)"), "date"))

    def input_label(self, name: str, label: str) -> str:
        return f"{label} ({scope_time_zone(self.request)})"

    def filter(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        tz = scope_time_zone(request)
        try:
            if "started_from" in self.used_parameters:
                day = dt.date.fromisoformat(self.used_parameters["started_from"])
                queryset = queryset.filter(started_at__gte=dt.datetime.combine(day, dt.time(), tz))
            if "started_to" in self.used_parameters:
                day = dt.date.fromisoformat(self.used_parameters["started_to"]) + dt.timedelta(days=1)
                queryset = queryset.filter(started_at__lt=dt.datetime.combine(day, dt.time(), tz))
        except ValueError as exc:
            raise IncorrectLookupParameters(exc) from exc
        return queryset


class ExtensionFilter(InputFilter):
    title = _("extension")
    inputs = (("extension", "Extension", "text"),)

    def filter(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(extension_condition(self.used_parameters["extension"]))


# ---------------------------------------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------------------------------------


class CallEventInline(ReadOnlyTenantInline):
    """The PBX's events as stored: the raw material of the readable timeline, folded away by default."""

    model = CallEvent
    fields = ("kind", "order_key", "occurred_at", "leg_id", "status", "last_error", "normalised_view")
    readonly_fields = fields
    ordering = ("order_key", "id")
    classes = ["collapse"]
    verbose_name_plural = _("Events as received (JSON)")

    @admin.display(description=_("Normalised"))
    def normalised_view(self, obj: CallEvent) -> SafeString:
        return format_html(
            "<details><summary>{}</summary>{}</details>", _("JSON"), pretty_json(obj.normalised)
        )


class RoutingDecisionInline(ReadOnlyTenantInline):
    model = RoutingDecision
    fk_name = "call"
    fields = ("created_at", "caller", "did", "extension", "display_name", "source", "latency_ms")
    readonly_fields = fields
    verbose_name_plural = _("Routing decisions")


class OutboundJobInline(ReadOnlyTenantInline):
    model = OutboundJob
    fk_name = "call"
    fields = (
        "kind",
        "connection_ref",
        "order_key",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status",
        "last_error",
        "attempts_link",
    )
    readonly_fields = fields
    verbose_name_plural = _("Outbound jobs")

    @admin.display(description=_("Attempt log"))
    def attempts_link(self, obj: OutboundJob) -> SafeString | str:
        if not obj.pk:
            return "—"
        url = reverse("admin:calls_outboundjob_change", args=[obj.pk])
        return format_html('<a href="{}#attempt_log-group">{} attempt(s)</a>', url, obj.attempt_log.count())


@admin.register(Call)
class CallAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    writable = False
    list_display = (
        "started_local",
        "direction",
        "client_phone",
        "external_phone",
        "extension",
        "result",
        "talk_seconds",
        "recording_state",
        "tenant",
        "pbx_connection",
    )
    list_filter = (
        ("tenant", RelatedOnlyFieldListFilter),
        "direction",
        "result",
        StartedAtRangeFilter,
        ExtensionFilter,
        ("pbx_connection", RelatedOnlyFieldListFilter),
    )
    # The search itself is get_search_results(); a search field makes the admin show the box.
    search_fields = ("provider_call_id",)
    search_help_text = _("A phone number in any form, an extension or the PBX's call id.")
    list_select_related = ("tenant", "pbx_connection", "recording")
    actions = ["resend_to_crm", "fetch_recording_again", "revoke_recording_link"]
    fieldsets = (
        (_("What happened"), {"fields": ("timeline",)}),
        (
            None,
            {
                "fields": (
                    "tenant",
                    "pbx_connection",
                    "provider_call_id",
                    "direction",
                    "result",
                    "completion_note",
                    "location",
                )
            },
        ),
        (
            _("Parties"),
            {
                "fields": (
                    "client_phone",
                    "client_phone_raw",
                    "external_phone",
                    "rang_extensions",
                    "answered_extensions",
                    "first_answered_extension",
                    "last_answered_extension",
                    "initiating_extension",
                    "extension",
                )
            },
        ),
        (
            _("Times"),
            {
                "fields": (
                    "started_at",
                    "answered_at",
                    "ended_at",
                    "wait_seconds",
                    "talk_seconds",
                    "ended",
                    "final_for_crm",
                    "final_at",
                )
            },
        ),
        (
            _("Recording"),
            {"fields": ("recording_expected", "recording_state", "recording_link", "recording_player")},
        ),
        (_("Recording playbacks (audit)"), {"fields": ("playback_log",)}),
    )
    readonly_fields = (
        "timeline",
        "extension",
        "recording_state",
        "recording_link",
        "recording_player",
        "playback_log",
    )
    inlines = [CallEventInline, RoutingDecisionInline, OutboundJobInline]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        regions = scope_tenants(request).values_list("region", flat=True).distinct()
        condition = Q(provider_call_id=term) | phone_condition(term, regions)
        if is_extension(term):
            condition |= extension_condition(term)
        return queryset.filter(condition), False

    change_list_template = "admin/calls/call/change_list.html"

    def get_urls(self) -> list[Any]:
        custom = [
            path(
                "export.csv",
                self.admin_site.admin_view(self.export_view),
                {"fmt": "csv"},
                name="calls_call_export_csv",
            ),
            path(
                "export.xlsx",
                self.admin_site.admin_view(self.export_view),
                {"fmt": "xlsx"},
                name="calls_call_export_xlsx",
            ),
        ]
        return custom + super().get_urls()

    def export_view(self, request: HttpRequest, fmt: str) -> HttpResponseBase:
        """The filtered list (the same query string as the list page) as a file."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        queryset = changelist.get_queryset(request)
        name = "calls-" + timezone.localtime().strftime("%Y%m%d-%H%M")
        if fmt == "xlsx":
            return exports.xlsx_response(queryset, name)
        return exports.csv_response(queryset, name)

    @admin.display(description=_("Timeline"))
    def timeline(self, obj: Call) -> SafeString | str:
        """Who rang, who answered, transfers, hang-up, routing, every message to every CRM, the recording: in
        the tenant's time."""
        if not obj.pk:
            return "—"
        rows = format_html_join(
            "",
            '<li class="status-{}"><span class="when">{}</span> {}</li>',
            (
                (entry.status, tenant_time(entry.at, obj.tenant, seconds=True), entry.text)
                for entry in call_timeline(obj)
            ),
        )
        return format_html('<ul class="timeline" id="call-timeline">{}</ul>', rows)

    @admin.display(description=_("Started"), ordering="started_at")
    def started_local(self, obj: Call) -> str:
        """In the call's tenant's zone; named when the page is read in another zone (users of several tenants)."""
        return tenant_time(obj.started_at, obj.tenant, seconds=True)

    @admin.display(description=_("Extension"))
    def extension(self, obj: Call) -> str:
        return (
            obj.last_answered_extension
            or obj.initiating_extension
            or (obj.rang_extensions[0] if obj.rang_extensions else "")
        )

    @admin.display(description=_("Recording"))
    def recording_state(self, obj: Call) -> str:
        recording = getattr(obj, "recording", None) if obj.pk else None
        return recording.get_state_display() if recording else "—"

    @admin.display(description=_("Recording link"))
    def recording_link(self, obj: Call) -> SafeString | str:
        recording = getattr(obj, "recording", None) if obj.pk else None
        if recording is None:
            return "—"
        if recording.state == Recording.UNAVAILABLE:
            return (
                _("unavailable: %(reason)s") % {"reason": recording.reason}
                if recording.reason
                else _("unavailable")
            )
        if recording.state == Recording.PURGED:
            return _("purged by retention")
        # The permanent link works once the file is stored; it is the one CRMs received.
        return format_html('<a href="{0}" target="_blank" rel="noopener">{0}</a>', recording.public_url)

    @admin.display(description=_("Listen"))
    def recording_player(self, obj: Call) -> SafeString | str:
        recording = getattr(obj, "recording", None) if obj.pk else None
        if recording is None or recording.state != Recording.STORED:
            return "—"
        return format_html(
            '<audio controls preload="none" src="{}" type="{}"></audio>',
            recording.public_url,
            recording.content_type or "audio/mpeg",
        )

    @admin.display(description=_("Who played the recording"))
    def playback_log(self, obj: Call) -> SafeString | str:
        recording = getattr(obj, "recording", None) if obj.pk else None
        if recording is None:
            return "—"
        rows = list(recording.playbacks.order_by("-at")[:PLAYBACKS_SHOWN])
        if not rows:
            return _("Never played.")
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    tenant_time(p.at, obj.tenant, seconds=True),
                    p.address or "—",
                    p.status,
                    _("yes") if p.client_id_used else "",
                    p.user_agent,
                )
                for p in rows
            ),
        )
        more = format_html(
            '<p><a href="{}?{}">All playbacks of this call</a></p>',
            reverse("admin:calls_playbacklog_changelist"),
            urlencode({"q": obj.provider_call_id}),
        )
        return format_html(
            "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>clientId</th><th>{}</th></tr>{}</table>{}",
            _("At"),
            _("Address"),
            _("Status"),
            _("User agent"),
            body,
            more,
        )

    @admin.action(description=_("Fetch the recording again"), permissions=["operate"])
    def fetch_recording_again(self, request: HttpRequest, queryset: QuerySet) -> None:
        queued = 0
        for call in self.operable_queryset(request, queryset).filter(recording__isnull=False):
            if recordings.fetch_again(call.recording) is not None:
                queued += 1
        self.message_user(
            request,
            _("%(count)s recording fetch(es) queued; stored or purged recordings are left alone.")
            % {"count": queued},
        )

    @admin.action(description=_("Revoke the recording link and send a new one"), permissions=["operate"])
    def revoke_recording_link(self, request: HttpRequest, queryset: QuerySet) -> None:
        # A leaked link (forwarded, logged) stops working at once; CRMs that can replace it get the new one.
        revoked = queued = 0
        for call in self.operable_queryset(request, queryset).filter(recording__isnull=False):
            queued += services.revoke_recording_link(call.recording)
            revoked += 1
        self.message_user(
            request,
            _(
                "%(revoked)s recording link(s) revoked; %(queued)s message(s) with the new link queued to CRMs."
            )
            % {"revoked": revoked, "queued": queued},
        )

    @admin.action(description=_("Resend to CRM"), permissions=["operate"])
    def resend_to_crm(self, request: HttpRequest, queryset: QuerySet) -> None:
        allowed = self.operable_queryset(request, queryset)
        skipped = queryset.count() - allowed.count()
        jobs = sum(services.resend_to_crm(call) for call in allowed)
        self.message_user(
            request,
            _("Queued %(jobs)s message(s) to CRMs for %(calls)s call(s).")
            % {"jobs": jobs, "calls": allowed.count()},
        )
        if skipped:
            self.message_user(
                request,
                _("%(count)s call(s) skipped: you only read those tenants.") % {"count": skipped},
                messages.WARNING,
            )


# ---------------------------------------------------------------------------------------------------------
# Outbound jobs and their attempts
# ---------------------------------------------------------------------------------------------------------


def hides_private_answers(request: HttpRequest, job: OutboundJob | None) -> bool:
    """What a private host answered is shown to superusers only (docs/security.md): tenant staff could
    otherwise point a connection at an intranet service and read it through the delivery log."""
    return job is not None and not is_superuser(request) and job.connection.reaches_private_network()


HIDDEN_ANSWER = _("(hidden: the target is on a private network; the operator sees it)")


class JobAttemptInline(ReadOnlyTenantInline):
    model = JobAttempt
    fields = ("started_at", "outcome", "status_code", "duration_ms", "batch_size", "error", "response")
    readonly_fields = (*fields, "response_hidden")
    verbose_name_plural = _("Attempts")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if hides_private_answers(request, obj):
            return tuple("response_hidden" if f == "response" else f for f in self.fields)
        return self.fields

    @admin.display(description=_("Response"))
    def response_hidden(self, obj: JobAttempt) -> str:
        return HIDDEN_ANSWER if obj.response else ""


@admin.register(OutboundJob)
class OutboundJobAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    writable = False
    list_display = (
        "created_at",
        "kind",
        "connection_ref",
        "call_link",
        "delivery_state",
        "attempts",
        "next_attempt_at",
        "last_status",
        "tenant",
    )
    list_filter = (
        ("tenant", RelatedOnlyFieldListFilter),
        "status",
        "kind",
        ("crm_connection", RelatedOnlyFieldListFilter),
    )
    search_fields = ("dedupe_key", "call__provider_call_id", "kind")
    list_select_related = ("tenant", "call", "crm_connection", "pbx_connection")
    actions = ["retry_now"]
    fields = (
        "tenant",
        "connection_ref",
        "kind",
        "call_link",
        "order_key",
        "dedupe_key",
        "delivery_state",
        "attempts",
        "due_at",
        "next_attempt_at",
        "window_ends_at",
        "expires_at",
        "lease_owner",
        "lease_expires_at",
        "last_status",
        "last_error",
        "last_response",
        "sent_at",
        "created_at",
        "payload",
    )
    readonly_fields = ("call_link", "last_response_hidden", "delivery_state")
    inlines = [JobAttemptInline]

    @admin.display(description=_("Status"), ordering="status")
    def delivery_state(self, obj: OutboundJob) -> str:
        """A pending job of an inactive connection is held: it goes out on reactivation (inside its window)."""
        connection = obj.crm_connection if obj.crm_connection_id else obj.pbx_connection
        if obj.status == OutboundJob.PENDING and connection is not None and not connection.active:
            return gettext("held (connection inactive)")
        return obj.get_status_display()

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if hides_private_answers(request, obj):
            return tuple("last_response_hidden" if f == "last_response" else f for f in self.fields)
        return self.fields

    @admin.display(description=_("Last response"))
    def last_response_hidden(self, obj: OutboundJob) -> str:
        return HIDDEN_ANSWER if obj.last_response else ""

    @admin.display(description=_("Call"))
    def call_link(self, obj: OutboundJob) -> SafeString | str:
        if not obj.call_id:
            return "—"
        url = reverse("admin:calls_call_change", args=[obj.call_id])
        return format_html('<a href="{}">{}</a>', url, obj.call)

    @admin.action(description=_("Retry now (failed or dead jobs)"), permissions=["operate"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        allowed = self.operable_queryset(request, queryset)
        retryable = allowed.filter(status__in=[OutboundJob.FAILED, OutboundJob.DEAD])
        ignored = queryset.count() - retryable.count()
        count = outbox.retry_now(retryable)
        self.message_user(request, _("%(count)s job(s) queued to be sent again now.") % {"count": count})
        if ignored:
            self.message_user(
                request,
                _(
                    "%(count)s job(s) left alone: only failed or dead jobs of tenants you administer are retried."
                )
                % {"count": ignored},
                messages.WARNING,
            )


@admin.register(CallEvent)
class CallEventAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    """The inbox: every stored PBX event, whether the processor applied it, and why not (docs/operations.md)."""

    writable = False
    tenant_path = "pbx_connection__tenant"
    list_display = (
        "received_at",
        "kind",
        "provider_call_id",
        "status",
        "attempts",
        "next_attempt_at",
        "last_error",
        "pbx_connection",
    )
    list_filter = ("status", "kind", ("pbx_connection", RelatedOnlyFieldListFilter))
    search_fields = ("provider_call_id", "dedupe_key")
    list_select_related = ("pbx_connection",)
    actions = ["requeue"]
    fields = (
        "pbx_connection",
        "provider_call_id",
        "call",
        "kind",
        "order_key",
        "dedupe_key",
        "leg_id",
        "occurred_at",
        "received_at",
        "status",
        "attempts",
        "next_attempt_at",
        "processed_at",
        "last_error",
        "normalised",
        "raw",
    )

    @admin.action(description=_("Apply again (failed events)"), permissions=["operate"])
    def requeue(self, request: HttpRequest, queryset: QuerySet) -> None:
        allowed = self.operable_queryset(request, queryset)
        count = processor.requeue(allowed)
        self.message_user(
            request, _("%(count)s failed event(s) queued to be applied again.") % {"count": count}
        )
        if count < queryset.count():
            self.message_user(
                request,
                _("Events that were not failed, or of tenants you do not administer, were left alone."),
                messages.WARNING,
            )


# ---------------------------------------------------------------------------------------------------------
# Routing decisions and click-to-call requests (including those that never became a call)
# ---------------------------------------------------------------------------------------------------------


@admin.register(RoutingDecision)
class RoutingDecisionAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    writable = False
    list_display = (
        "created_at",
        "caller",
        "did",
        "extension",
        "display_name",
        "source",
        "latency_ms",
        "tenant",
    )
    list_filter = (("tenant", RelatedOnlyFieldListFilter), "source")
    search_fields = ("caller", "did", "extension", "provider_call_id")
    list_select_related = ("tenant",)


@admin.register(OriginateRequest)
class OriginateRequestAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    writable = False
    list_display = (
        "created_at",
        "extension",
        "phone",
        "status",
        "reason",
        "crm_connection",
        "correlation_id",
        "tenant",
    )
    list_filter = (("tenant", RelatedOnlyFieldListFilter), "status", "refusal")
    search_fields = ("phone", "extension", "correlation_id")
    list_select_related = ("tenant", "crm_connection")

    @admin.display(description=_("Reason"))
    def reason(self, obj: OriginateRequest) -> str:
        # Refusals by the click-to-call guard and PBX failures: what the CRM was answered.
        return obj.error[:200] if obj.status in (OriginateRequest.REFUSED, OriginateRequest.FAILED) else ""


# ---------------------------------------------------------------------------------------------------------
# Playback audit: every request for a recording link
# ---------------------------------------------------------------------------------------------------------


@admin.register(PlaybackLog)
class PlaybackLogAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    """Who fetched which recording, when, from where: read-only, scoped to the call's tenant."""

    tenant_path = "recording__call__tenant"
    writable = False
    list_display = ("at", "call_link", "address", "status", "client_id_used", "user_agent", "tenant")
    list_filter = (("recording__call__tenant", RelatedOnlyFieldListFilter), "status", "client_id_used")
    search_fields = ("address", "recording__call__provider_call_id")
    list_select_related = ("recording__call__tenant",)
    date_hierarchy = "at"
    fields = ("at", "call_link", "address", "status", "client_id_used", "user_agent")
    readonly_fields = fields

    @admin.display(description=_("Tenant"))
    def tenant(self, obj: PlaybackLog) -> Any:
        return obj.recording.call.tenant

    @admin.display(description=_("Call"))
    def call_link(self, obj: PlaybackLog) -> SafeString:
        url = reverse("admin:calls_call_change", args=[obj.recording.call_id])
        return format_html('<a href="{}">{}</a>', url, obj.recording.call)
