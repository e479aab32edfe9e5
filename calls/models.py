"""The call log, the routing and click-to-call ledgers, recordings and the outbox."""

from __future__ import annotations

import hashlib
import secrets as pysecrets

from django.conf import settings
from django.core import signing
from django.db import models
from django.utils import timezone

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


class Call(models.Model):
    IN, OUT, INTERNAL = "in", "out", "internal"
    DIRECTIONS = [(IN, "incoming"), (OUT, "outgoing"), (INTERNAL, "internal"), ("", "unknown")]
    RESULT_CHOICES = [(r, r.replace("_", " ")) for r in RESULTS] + [("", "in progress")]

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="calls")
    # RESTRICT: removing a PBX connection must not silently delete its call history (deleting the whole tenant
    # still does, since that cascades to both).
    pbx_connection = models.ForeignKey(PbxConnection, on_delete=models.RESTRICT, related_name="calls")
    provider_call_id = models.CharField(max_length=200)
    direction = models.CharField(max_length=10, choices=DIRECTIONS, blank=True)
    client_phone = models.CharField(max_length=20, blank=True, db_index=True, help_text="E.164")
    client_phone_raw = models.CharField(max_length=200, blank=True)
    external_phone = models.CharField(max_length=20, blank=True, help_text="The DID (E.164)")
    location = models.CharField(
        max_length=10, blank=True, help_text="Where the call is now: ivr, queue, agent"
    )
    rang_extensions = models.JSONField(default=list, blank=True)
    answered_extensions = models.JSONField(default=list, blank=True)
    first_answered_extension = models.CharField(max_length=6, blank=True, db_index=True)
    last_answered_extension = models.CharField(max_length=6, blank=True, db_index=True)
    initiating_extension = models.CharField(max_length=6, blank=True)
    started_at = models.DateTimeField(null=True, blank=True, db_index=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    talk_seconds = models.PositiveIntegerField(null=True, blank=True)
    wait_seconds = models.PositiveIntegerField(null=True, blank=True)
    result = models.CharField(max_length=20, choices=RESULT_CHOICES, blank=True, db_index=True)
    ended = models.BooleanField(default=False, help_text="The PBX reported the end of the call.")
    final_for_crm = models.BooleanField(
        default=False, help_text="Outcome and recording expectation known: completion messages may go out."
    )
    final_at = models.DateTimeField(null=True, blank=True)
    recording_expected = models.BooleanField(null=True, blank=True)
    completion_note = models.CharField(max_length=300, blank=True)
    originate_request = models.ForeignKey(
        "OriginateRequest", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["pbx_connection", "provider_call_id"], name="unique_provider_call"
            ),
        ]
        indexes = [models.Index(fields=["tenant", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.get_direction_display()} {self.client_phone or self.client_phone_raw} ({self.provider_call_id})"

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
    applies the event (docs/pipeline.md "Inbox"). `status` says how far that got.
    """

    KIND_CHOICES = [(k, k) for k in KINDS]
    PENDING, DONE, FAILED = "pending", "done", "failed"
    STATUSES = [(PENDING, "waiting to be applied"), (DONE, "applied"), (FAILED, "failed, skipped")]

    call = models.ForeignKey(Call, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    pbx_connection = models.ForeignKey(PbxConnection, on_delete=models.CASCADE, related_name="+")
    provider_call_id = models.CharField(max_length=200, default="")
    dedupe_key = models.CharField(max_length=300)
    order_key = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=KIND_CHOICES)
    leg_id = models.CharField(max_length=200, blank=True)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)
    normalised = models.JSONField(default=dict)
    raw = models.JSONField(default=dict, help_text="As received, credentials stripped")
    status = models.CharField(max_length=8, choices=STATUSES, default=PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="Empty: as soon as possible")
    last_error = models.TextField(blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)

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

    def __str__(self) -> str:
        return f"{self.kind} {self.occurred_at:%H:%M:%S}"


class RoutingDecision(models.Model):
    SOURCES = ["crm", "cache", "history", "none"]

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="routing_decisions")
    pbx_connection = models.ForeignKey(PbxConnection, null=True, blank=True, on_delete=models.SET_NULL)
    call = models.ForeignKey(
        Call, null=True, blank=True, on_delete=models.SET_NULL, related_name="routing_decisions"
    )
    provider_call_id = models.CharField(max_length=200, blank=True)
    caller = models.CharField(max_length=20, blank=True)
    did = models.CharField(max_length=20, blank=True)
    extension = models.CharField(max_length=6, blank=True)
    display_name = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=60, help_text="CRM connection key, cache, history or none")
    latency_ms = models.PositiveIntegerField(default=0)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.caller} → {self.extension or '-'} ({self.source})"


class OriginateRequest(models.Model):
    PENDING, OK, FAILED, REFUSED = "pending", "ok", "failed", "refused"
    STATUSES = [
        (PENDING, "pending"),
        (OK, "accepted by the PBX"),
        (FAILED, "failed"),
        (REFUSED, "refused by the click-to-call guard"),
    ]
    # Why the guard refused (never sent to the PBX); the detail is in `error`.
    THROTTLED, REGION, NUMBER_TYPE = "throttled", "region", "number_type"
    REFUSALS = [
        (THROTTLED, "over CLICK_TO_CALL_THROTTLE"),
        (REGION, "destination outside the tenant's click-to-call regions"),
        (NUMBER_TYPE, "premium-rate or shared-cost number"),
    ]

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="originate_requests")
    pbx_connection = models.ForeignKey(PbxConnection, null=True, blank=True, on_delete=models.SET_NULL)
    crm_connection = models.ForeignKey(CrmConnection, null=True, blank=True, on_delete=models.SET_NULL)
    extension = models.CharField(max_length=6)
    phone = models.CharField(max_length=20, help_text="E.164")
    external_phone = models.CharField(max_length=20, blank=True)
    crm_user_id = models.CharField(max_length=100, blank=True)
    context = models.JSONField(default=dict, blank=True)
    correlation_id = models.CharField(max_length=200, blank=True, db_index=True)
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING)
    refusal = models.CharField(max_length=20, choices=REFUSALS, blank=True)
    error = models.TextField(blank=True)
    call = models.ForeignKey(Call, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        # The click-to-call throttle counts a connection's recent requests on every make-call.
        indexes = [models.Index(fields=["crm_connection", "created_at"], name="originate_throttle_idx")]

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
    STATES = [(s, s) for s in (EXPECTED, FETCHING, STORED, UNAVAILABLE, PURGED)]

    call = models.OneToOneField(Call, on_delete=models.CASCADE, related_name="recording")
    # The link's token is derived, never stored: HMAC (SECRET_KEY, salted) over the id and this version.
    # Revoking a link bumps the version, so the old token stops matching (docs/recordings.md).
    link_version = models.PositiveIntegerField(default=1, editable=False)
    legacy_token_hash = models.CharField(
        max_length=64, blank=True, db_index=True, editable=False, help_text="SHA-256 of a pre-HMAC link"
    )
    state = models.CharField(max_length=12, choices=STATES, default=EXPECTED)
    hints = models.JSONField(
        default=dict, blank=True, help_text="PBX hints for fetching (ids), no credentials"
    )
    file = models.CharField(max_length=300, blank=True, help_text="Name in the recordings storage")
    content_type = models.CharField(max_length=100, blank=True)
    size = models.PositiveBigIntegerField(null=True, blank=True)
    reason = models.TextField(blank=True)
    stored_at = models.DateTimeField(null=True, blank=True)
    purged_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

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
    STATUSES = [(s, s) for s in (PENDING, SENT, FAILED, DEAD, EXPIRED)]
    OPEN = (PENDING,)

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="outbound_jobs")
    pbx_connection = models.ForeignKey(
        PbxConnection, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    crm_connection = models.ForeignKey(
        CrmConnection, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    connection_ref = models.CharField(max_length=40, help_text="pbx:<id> or crm:<id>")
    kind = models.CharField(max_length=60)
    call = models.ForeignKey(Call, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs")
    order_key = models.CharField(max_length=100, blank=True)
    dedupe_key = models.CharField(max_length=300)
    payload = models.JSONField(
        default=dict, blank=True, help_text="Hints only; the message is built at send time"
    )
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    due_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    window_ends_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    expires_on_call_end = models.BooleanField(default=False)
    ordered = models.BooleanField(default=True)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_status = models.PositiveIntegerField(null=True, blank=True)
    last_response = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["connection_ref", "dedupe_key"], name="unique_outbound_job"),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"]),
            models.Index(fields=["call", "connection_ref", "order_key"]),
        ]

    def __str__(self) -> str:
        return f"{self.kind} → {self.connection_ref} ({self.status})"

    @property
    def connection(self) -> PbxConnection | CrmConnection:
        return self.crm_connection if self.crm_connection_id else self.pbx_connection


class JobAttempt(models.Model):
    SENT, TRANSIENT, PERMANENT = "sent", "transient", "permanent"

    job = models.ForeignKey(OutboundJob, on_delete=models.CASCADE, related_name="attempt_log")
    started_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    outcome = models.CharField(max_length=10)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    response = models.TextField(blank=True)
    batch_size = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["started_at", "id"]

    def __str__(self) -> str:
        return f"{self.outcome} at {self.started_at:%Y-%m-%d %H:%M:%S}"


class PlaybackLog(models.Model):
    """One request for a recording link, kept for the tenant's audit."""

    recording = models.ForeignKey(Recording, on_delete=models.CASCADE, related_name="playbacks")
    at = models.DateTimeField(default=timezone.now)
    address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    status = models.PositiveIntegerField(default=200)
    client_id_used = models.BooleanField(default=False)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.address} ({self.status})"
