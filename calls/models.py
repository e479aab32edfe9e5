"""The call log, the routing and click-to-call ledgers, recordings and the outbox."""

from __future__ import annotations

import hashlib
import secrets as pysecrets

from django.conf import settings
from django.core import signing
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from calls.events import KINDS, RESULTS
from integrations.models import CrmConnection, PbxConnection, Tenant


def new_recording_token() -> str:
    """Kept for the migrations that created the old random-token column; links are derived now."""
    return pysecrets.token_urlsafe(32)


# Namespaces the links' HMAC: a value signed for anything else (a session, a password reset) is no link.
RECORDING_LINK_SALT = "callbridge.recording-link"


def legacy_token_hash(token: str) -> str:
    """Links issued before tokens were derived stay valid: only this hash of them is kept."""
    return hashlib.sha256(token.encode()).hexdigest()


# What the admin calls each result and event kind (the stored values are our own enum, never translated).
RESULT_LABELS = {
    "answered": _("answered"),
    "missed": _("missed"),
    "cancelled": _("cancelled"),
    "busy": _("busy"),
    "no_answer": _("no answer"),
    "not_available": _("not available"),
    "not_allowed": _("not allowed"),
    "failed": _("failed"),
    "unknown": _("unknown"),
}

KIND_LABELS = {
    "ringing": _("ringing"),
    "answered": _("answered"),
    "held": _("on hold"),
    "leg_ended": _("leg ended"),
    "completed": _("completed"),
    "recording_ready": _("recording ready"),
    "unknown": _("unknown"),
}


class Call(models.Model):
    IN, OUT, INTERNAL = "in", "out", "internal"
    DIRECTIONS = [(IN, _("incoming")), (OUT, _("outgoing")), (INTERNAL, _("internal")), ("", _("unknown"))]
    RESULT_CHOICES = [(r, RESULT_LABELS.get(r, r.replace("_", " "))) for r in RESULTS] + [
        ("", _("in progress"))
    ]

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="calls", verbose_name=_("tenant")
    )
    # RESTRICT: removing a PBX connection must not silently delete its call history (deleting the whole tenant
    # still does, since that cascades to both).
    pbx_connection = models.ForeignKey(
        PbxConnection, on_delete=models.RESTRICT, related_name="calls", verbose_name=_("pbx connection")
    )
    provider_call_id = models.CharField(max_length=200, verbose_name=_("provider call id"))
    direction = models.CharField(max_length=10, choices=DIRECTIONS, blank=True, verbose_name=_("direction"))
    client_phone = models.CharField(
        max_length=20, blank=True, db_index=True, help_text=_("E.164"), verbose_name=_("client phone")
    )
    client_phone_raw = models.CharField(max_length=200, blank=True, verbose_name=_("client phone raw"))
    external_phone = models.CharField(
        max_length=20, blank=True, help_text=_("The DID (E.164)"), verbose_name=_("external phone")
    )
    location = models.CharField(
        max_length=10,
        blank=True,
        help_text=_("Where the call is now: ivr, queue, agent"),
        verbose_name=_("location"),
    )
    rang_extensions = models.JSONField(default=list, blank=True, verbose_name=_("rang extensions"))
    answered_extensions = models.JSONField(default=list, blank=True, verbose_name=_("answered extensions"))
    first_answered_extension = models.CharField(
        max_length=6, blank=True, db_index=True, verbose_name=_("first answered extension")
    )
    last_answered_extension = models.CharField(
        max_length=6, blank=True, db_index=True, verbose_name=_("last answered extension")
    )
    initiating_extension = models.CharField(max_length=6, blank=True, verbose_name=_("initiating extension"))
    started_at = models.DateTimeField(null=True, blank=True, db_index=True, verbose_name=_("started at"))
    answered_at = models.DateTimeField(null=True, blank=True, verbose_name=_("answered at"))
    ended_at = models.DateTimeField(null=True, blank=True, verbose_name=_("ended at"))
    talk_seconds = models.PositiveIntegerField(null=True, blank=True, verbose_name=_("talk seconds"))
    wait_seconds = models.PositiveIntegerField(null=True, blank=True, verbose_name=_("wait seconds"))
    result = models.CharField(
        max_length=20, choices=RESULT_CHOICES, blank=True, db_index=True, verbose_name=_("result")
    )
    ended = models.BooleanField(
        default=False, help_text=_("The PBX reported the end of the call."), verbose_name=_("ended")
    )
    final_for_crm = models.BooleanField(
        default=False,
        help_text=_("Outcome and recording expectation known: completion messages may go out."),
        verbose_name=_("final for crm"),
    )
    final_at = models.DateTimeField(null=True, blank=True, verbose_name=_("final at"))
    recording_expected = models.BooleanField(null=True, blank=True, verbose_name=_("recording expected"))
    completion_note = models.CharField(max_length=300, blank=True, verbose_name=_("completion note"))
    originate_request = models.ForeignKey(
        "OriginateRequest", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["pbx_connection", "provider_call_id"], name="unique_provider_call"
            ),
        ]
        indexes = [models.Index(fields=["tenant", "-started_at"])]
        verbose_name = _("call")
        verbose_name_plural = _("calls")

    def __str__(self) -> str:
        # Plain words whatever the language: this text appears in log lines too.
        direction = {self.IN: "incoming", self.OUT: "outgoing", self.INTERNAL: "internal"}.get(
            self.direction, "call"
        )
        return f"{direction} {self.client_phone or self.client_phone_raw} ({self.provider_call_id})"

    @property
    def is_external(self) -> bool:
        return self.direction in {self.IN, self.OUT}

    @property
    def responsible_extension(self) -> str:
        """Whom the call belongs to: the last who answered; unanswered, the routed or the initiating one."""
        if self.last_answered_extension:
            return self.last_answered_extension
        if self.initiating_extension:
            return self.initiating_extension
        decision = self.routing_decisions.exclude(extension="").order_by("-created_at").first()
        if decision:
            return decision.extension
        return self.rang_extensions[0] if self.rang_extensions else ""


class CallEvent(models.Model):
    """One PBX event, stored by the webhook (the inbox) and applied to its call by the inbox processor.

    The webhook writes only this row: `provider_call_id` names the call, `call` stays empty until a worker
    applies the event (docs/pipeline.md "The inbox"). `status` says how far that got.
    """

    KIND_CHOICES = [(k, KIND_LABELS.get(k, k)) for k in KINDS]
    PENDING, DONE, FAILED = "pending", "done", "failed"
    STATUSES = [(PENDING, _("waiting to be applied")), (DONE, _("applied")), (FAILED, _("failed, skipped"))]

    call = models.ForeignKey(
        Call, null=True, blank=True, on_delete=models.CASCADE, related_name="events", verbose_name=_("call")
    )
    pbx_connection = models.ForeignKey(
        PbxConnection, on_delete=models.CASCADE, related_name="+", verbose_name=_("pbx connection")
    )
    provider_call_id = models.CharField(max_length=200, default="", verbose_name=_("PBX call id"))
    dedupe_key = models.CharField(max_length=300, verbose_name=_("dedupe key"))
    order_key = models.CharField(max_length=100, verbose_name=_("order key"))
    kind = models.CharField(max_length=20, choices=KIND_CHOICES, verbose_name=_("kind"))
    leg_id = models.CharField(max_length=200, blank=True, verbose_name=_("leg id"))
    occurred_at = models.DateTimeField(verbose_name=_("occurred at"))
    received_at = models.DateTimeField(default=timezone.now, verbose_name=_("received at"))
    normalised = models.JSONField(default=dict, verbose_name=_("normalised"))
    raw = models.JSONField(
        default=dict, help_text=_("As received, credentials stripped"), verbose_name=_("raw")
    )
    status = models.CharField(max_length=8, choices=STATUSES, default=PENDING, verbose_name=_("status"))
    attempts = models.PositiveSmallIntegerField(default=0, verbose_name=_("attempts"))
    next_attempt_at = models.DateTimeField(
        null=True, blank=True, help_text=_("Empty: as soon as possible"), verbose_name=_("next attempt at")
    )
    last_error = models.TextField(blank=True, verbose_name=_("last error"))
    processed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("processed at"))

    class Meta:
        ordering = ["order_key", "id"]
        constraints = [
            models.UniqueConstraint(fields=["pbx_connection", "dedupe_key"], name="unique_call_event"),
        ]
        indexes = [
            # The processor's queue and /readyz's oldest pending event: small, only unapplied rows.
            models.Index(
                fields=["received_at"], name="callevent_pending_idx", condition=models.Q(status="pending")
            ),
            models.Index(fields=["pbx_connection", "provider_call_id"], name="callevent_provider_call_idx"),
        ]
        verbose_name = _("call event")
        verbose_name_plural = _("call events")

    def __str__(self) -> str:
        return f"{self.kind} {self.occurred_at:%H:%M:%S}"


class RoutingDecision(models.Model):
    SOURCES = ["crm", "cache", "history", "none"]

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="routing_decisions", verbose_name=_("tenant")
    )
    pbx_connection = models.ForeignKey(
        PbxConnection, null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("pbx connection")
    )
    call = models.ForeignKey(
        Call,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="routing_decisions",
        verbose_name=_("call"),
    )
    provider_call_id = models.CharField(max_length=200, blank=True, verbose_name=_("provider call id"))
    caller = models.CharField(max_length=20, blank=True, verbose_name=_("caller"))
    did = models.CharField(max_length=20, blank=True, verbose_name=_("did"))
    extension = models.CharField(max_length=6, blank=True, verbose_name=_("extension"))
    display_name = models.CharField(max_length=200, blank=True, verbose_name=_("display name"))
    source = models.CharField(
        max_length=60, help_text=_("CRM connection key, cache, history or none"), verbose_name=_("source")
    )
    latency_ms = models.PositiveIntegerField(default=0, verbose_name=_("latency ms"))
    detail = models.JSONField(default=dict, blank=True, verbose_name=_("detail"))
    created_at = models.DateTimeField(default=timezone.now, db_index=True, verbose_name=_("created at"))

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("routing decision")
        verbose_name_plural = _("routing decisions")

    def __str__(self) -> str:
        return f"{self.caller} → {self.extension or '-'} ({self.source})"


class OriginateRequest(models.Model):
    PENDING, OK, FAILED, REFUSED = "pending", "ok", "failed", "refused"
    STATUSES = [
        (PENDING, _("pending")),
        (OK, _("accepted by the PBX")),
        (FAILED, _("failed")),
        (REFUSED, _("refused by the click-to-call guard")),
    ]
    # Why the guard refused (never sent to the PBX); the detail is in `error`.
    THROTTLED, REGION, NUMBER_TYPE = "throttled", "region", "number_type"
    REFUSALS = [
        (THROTTLED, _("over CLICK_TO_CALL_THROTTLE")),
        (REGION, _("destination outside the tenant's click-to-call regions")),
        (NUMBER_TYPE, _("premium-rate or shared-cost number")),
    ]

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="originate_requests", verbose_name=_("tenant")
    )
    pbx_connection = models.ForeignKey(
        PbxConnection, null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("pbx connection")
    )
    crm_connection = models.ForeignKey(
        CrmConnection, null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("crm connection")
    )
    extension = models.CharField(max_length=6, verbose_name=_("extension"))
    phone = models.CharField(max_length=20, help_text=_("E.164"), verbose_name=_("phone"))
    external_phone = models.CharField(max_length=20, blank=True, verbose_name=_("external phone"))
    crm_user_id = models.CharField(max_length=100, blank=True, verbose_name=_("crm user id"))
    context = models.JSONField(default=dict, blank=True, verbose_name=_("context"))
    correlation_id = models.CharField(
        max_length=200, blank=True, db_index=True, verbose_name=_("correlation id")
    )
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING, verbose_name=_("status"))
    refusal = models.CharField(max_length=20, choices=REFUSALS, blank=True, verbose_name=_("refusal"))
    error = models.TextField(blank=True, verbose_name=_("error"))
    call = models.ForeignKey(
        Call, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", verbose_name=_("call")
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True, verbose_name=_("created at"))

    class Meta:
        ordering = ["-created_at"]
        # The click-to-call throttle counts a connection's recent requests on every make-call.
        indexes = [models.Index(fields=["crm_connection", "created_at"], name="originate_throttle_idx")]
        verbose_name = _("click-to-call request")
        verbose_name_plural = _("click-to-call requests")

    def __str__(self) -> str:
        return f"{self.extension} → {self.phone} ({self.status})"


class Recording(models.Model):
    EXPECTED, FETCHING, STORED, UNAVAILABLE, PURGED = (
        "expected",
        "fetching",
        "stored",
        "unavailable",
        "purged",
    )
    STATES = [
        (EXPECTED, _("expected")),
        (FETCHING, _("fetching")),
        (STORED, _("stored")),
        (UNAVAILABLE, _("unavailable")),
        (PURGED, _("purged")),
    ]

    call = models.OneToOneField(
        Call, on_delete=models.CASCADE, related_name="recording", verbose_name=_("call")
    )
    # The link's token is derived, never stored: HMAC (SECRET_KEY, salted) over the id and this version.
    # Revoking a link bumps the version, so the old token stops matching (docs/recordings.md).
    link_version = models.PositiveIntegerField(default=1, editable=False, verbose_name=_("link version"))
    legacy_token_hash = models.CharField(
        max_length=64,
        blank=True,
        db_index=True,
        editable=False,
        help_text=_("SHA-256 of a pre-HMAC link"),
        verbose_name=_("legacy token hash"),
    )
    state = models.CharField(max_length=12, choices=STATES, default=EXPECTED, verbose_name=_("state"))
    hints = models.JSONField(
        default=dict,
        blank=True,
        help_text=_("PBX hints for fetching (ids), no credentials"),
        verbose_name=_("hints"),
    )
    file = models.CharField(
        max_length=300, blank=True, help_text=_("Name in the recordings storage"), verbose_name=_("file")
    )
    content_type = models.CharField(max_length=100, blank=True, verbose_name=_("content type"))
    size = models.PositiveBigIntegerField(null=True, blank=True, verbose_name=_("size"))
    reason = models.TextField(blank=True, verbose_name=_("reason"))
    stored_at = models.DateTimeField(null=True, blank=True, verbose_name=_("stored at"))
    purged_at = models.DateTimeField(null=True, blank=True, verbose_name=_("purged at"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("recording")
        verbose_name_plural = _("recordings")

    def __str__(self) -> str:
        return f"recording of {self.call_id} ({self.state})"

    @property
    def token(self) -> str:
        """`<id>.<version>:<HMAC-SHA256>`: built at send time, checked in constant time by by_token()."""
        return signing.Signer(salt=RECORDING_LINK_SALT).sign(f"{self.pk}.{self.link_version}")

    @classmethod
    def by_token(cls, token: str) -> Recording | None:
        """The recording a link names, if the link is genuine and not revoked. SECRET_KEY_FALLBACKS keep the
        links signed with an older key valid while it is listed there."""
        try:
            value = signing.Signer(salt=RECORDING_LINK_SALT).unsign(token)
        except signing.BadSignature:
            if not token or len(token) > 100:
                return None
            return (
                cls.objects.select_related("call").filter(legacy_token_hash=legacy_token_hash(token)).first()
            )
        pk, _, version = value.partition(".")
        if not (pk.isdigit() and version.isdigit()):
            return None
        return cls.objects.select_related("call").filter(pk=int(pk), link_version=int(version)).first()

    @property
    def public_url(self) -> str:
        # From the setting itself: models import no provider code (STYLE.md item 16).
        return f"{settings.PUBLIC_BASE_URL.rstrip('/')}/records/{self.token}"


class OutboundJob(models.Model):
    PENDING, SENT, FAILED, DEAD, EXPIRED = "pending", "sent", "failed", "dead", "expired"
    STATUSES = [
        (PENDING, _("pending")),
        (SENT, _("sent")),
        (FAILED, _("failed")),
        (DEAD, _("dead")),
        (EXPIRED, _("expired")),
    ]
    OPEN = (PENDING,)

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="outbound_jobs", verbose_name=_("tenant")
    )
    pbx_connection = models.ForeignKey(
        PbxConnection,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="jobs",
        verbose_name=_("pbx connection"),
    )
    crm_connection = models.ForeignKey(
        CrmConnection,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="jobs",
        verbose_name=_("crm connection"),
    )
    connection_ref = models.CharField(
        max_length=40, help_text=_("pbx:<id> or crm:<id>"), verbose_name=_("connection ref")
    )
    kind = models.CharField(max_length=60, verbose_name=_("kind"))
    call = models.ForeignKey(
        Call, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs", verbose_name=_("call")
    )
    order_key = models.CharField(max_length=100, blank=True, verbose_name=_("order key"))
    dedupe_key = models.CharField(max_length=300, verbose_name=_("dedupe key"))
    payload = models.JSONField(
        default=dict,
        blank=True,
        help_text=_("Hints only; the message is built at send time"),
        verbose_name=_("payload"),
    )
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING, verbose_name=_("status"))
    attempts = models.PositiveIntegerField(default=0, verbose_name=_("attempts"))
    due_at = models.DateTimeField(default=timezone.now, verbose_name=_("due at"))
    next_attempt_at = models.DateTimeField(default=timezone.now, verbose_name=_("next attempt at"))
    window_ends_at = models.DateTimeField(null=True, blank=True, verbose_name=_("window ends at"))
    expires_at = models.DateTimeField(null=True, blank=True, verbose_name=_("expires at"))
    expires_on_call_end = models.BooleanField(default=False, verbose_name=_("expires on call end"))
    ordered = models.BooleanField(default=True, verbose_name=_("ordered"))
    lease_owner = models.CharField(max_length=64, blank=True, verbose_name=_("lease owner"))
    lease_expires_at = models.DateTimeField(null=True, blank=True, verbose_name=_("lease expires at"))
    last_error = models.TextField(blank=True, verbose_name=_("last error"))
    last_status = models.PositiveIntegerField(null=True, blank=True, verbose_name=_("last status"))
    last_response = models.TextField(blank=True, verbose_name=_("last response"))
    sent_at = models.DateTimeField(null=True, blank=True, verbose_name=_("sent at"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["connection_ref", "dedupe_key"], name="unique_outbound_job"),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"]),
            models.Index(fields=["call", "connection_ref", "order_key"]),
        ]
        verbose_name = _("outbound job")
        verbose_name_plural = _("outbound jobs")

    def __str__(self) -> str:
        return f"{self.kind} → {self.connection_ref} ({self.status})"

    @property
    def connection(self) -> PbxConnection | CrmConnection:
        return self.crm_connection if self.crm_connection_id else self.pbx_connection


class JobAttempt(models.Model):
    # fenced: the worker's lease had run out when it came back; its result changed nothing on the job.
    SENT, TRANSIENT, PERMANENT, FENCED = "sent", "transient", "permanent", "fenced"

    job = models.ForeignKey(
        OutboundJob, on_delete=models.CASCADE, related_name="attempt_log", verbose_name=_("job")
    )
    started_at = models.DateTimeField(default=timezone.now, verbose_name=_("started at"))
    duration_ms = models.PositiveIntegerField(default=0, verbose_name=_("duration ms"))
    outcome = models.CharField(max_length=10, verbose_name=_("outcome"))
    status_code = models.PositiveIntegerField(null=True, blank=True, verbose_name=_("status code"))
    error = models.TextField(blank=True, verbose_name=_("error"))
    response = models.TextField(blank=True, verbose_name=_("response"))
    batch_size = models.PositiveIntegerField(default=1, verbose_name=_("batch size"))

    class Meta:
        ordering = ["started_at", "id"]
        verbose_name = _("attempt")
        verbose_name_plural = _("attempts")

    def __str__(self) -> str:
        return f"{self.outcome} at {self.started_at:%Y-%m-%d %H:%M:%S}"


class PlaybackLog(models.Model):
    """One request for a recording link, kept for the tenant's audit."""

    recording = models.ForeignKey(
        Recording, on_delete=models.CASCADE, related_name="playbacks", verbose_name=_("recording")
    )
    at = models.DateTimeField(default=timezone.now, verbose_name=_("at"))
    address = models.GenericIPAddressField(null=True, blank=True, verbose_name=_("address"))
    user_agent = models.CharField(max_length=300, blank=True, verbose_name=_("user agent"))
    status = models.PositiveIntegerField(default=200, verbose_name=_("status"))
    client_id_used = models.BooleanField(default=False, verbose_name=_("client id used"))

    class Meta:
        ordering = ["-at"]
        verbose_name = _("recording playback")
        verbose_name_plural = _("recording playbacks")

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.address} ({self.status})"
