"""Signed webhooks to any system: the portal's call events, sent the way the Standard Webhooks specification
(https://www.standardwebhooks.com/) describes, so any of its libraries verifies them.

* Connection: settings `{}` or `{"events": [...]}` (a subset of EVENT_TYPES; all of them when left out); secrets
  `url` (https) and `signing_secret` (`whsec_` + base64 of 24 to 64 random bytes; "generate" makes one).
* Events: `call.ringing` (the call began: its first ring, an outgoing call's dialling, or whatever the PBX
  reported first), `call.answered` (once per
  extension that takes the call, so a transfer sends a second one), `call.completed` (the call is final: outcome
  and whether a recording comes are known), `call.recording_ready` (`recording_url` now serves the file).
* Body: `{"type": ..., "timestamp": <when it happened, ISO 8601 with the tenant's offset>, "data": <the call as
  GET /api/v1/calls/ lists it>}`, built when it is sent, so a retried message carries the call as it is then.
* Headers: `webhook-id` (the same for every retry of one message: the receiver's idempotency key),
  `webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 over
  "id.timestamp.body" keyed with the base64-decoded part of the secret after "whsec_">`.
* Delivery: one outbox job per message, retried with the outbox's backoff for 72 hours; messages of one call go
  in order. Any non-2xx answer is retried (a receiver may be mid-deploy), except 410 Gone, which the
  specification reserves for "stop sending": the message fails and the connection is flagged.
* No inbound endpoint: nothing is ever accepted at /hooks/webhook/<id>/.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import secrets as pysecrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from django.utils import timezone
from django.utils.translation import gettext_lazy

from api.serializers import call_data
from calls.models import Call, OutboundJob, Recording
from integrations import http
from integrations.http import OutboundError
from integrations.providers.base import (
    FINAL,
    CheckResult,
    CrmProvider,
    Field,
    JobSpec,
    Notice,
    ProviderError,
    RoutingAnswer,
    RoutingQuery,
    SchemaError,
    WebhookAuthError,
    WebhookInputError,
)

if TYPE_CHECKING:
    from django.http import HttpRequest
    from rest_framework.request import Request
    from rest_framework.response import Response

SCHEMA_VERSION = "1"
RINGING, ANSWERED, COMPLETED, RECORDING_READY = (
    "call.ringing",
    "call.answered",
    "call.completed",
    "call.recording_ready",
)
EVENT_TYPES = (RINGING, ANSWERED, COMPLETED, RECORDING_READY)
KINDS = {event: f"webhook.{event}" for event in EVENT_TYPES}
EVENT_OF_KIND = {kind: event for event, kind in KINDS.items()}
PING = "ping"  # check_connection's message; receivers ignore types they do not know
NOTICE_EVENTS = {
    "ringing": RINGING,
    "dialing": RINGING,
    "answered": ANSWERED,
    "completed": COMPLETED,
    # A call closed as `unknown` by reconciliation got its real end: a second call.completed (its own
    # webhook-id) carries the corrected call.
    "corrected": COMPLETED,
    "recording_stored": RECORDING_READY,
}
SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)  # the specification's bounds for the key
TIMEOUT = (3.05, 10)


def signing_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part after "whsec_"."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def new_signing_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(pysecrets.token_bytes(32)).decode()


class WebhookProvider(CrmProvider):
    key = "webhook"
    settings_fields = (
        Field(
            "events",
            "choices",
            choices=EVENT_TYPES,
            help=gettext_lazy("The event types to send; all of them when left out."),
        ),
    )
    secret_fields = (Field("url", "url", required=True), Field("signing_secret", "secret", issued=True))
    job_kinds: ClassVar[dict[str, Any]] = {kind: FINAL for kind in KINDS.values()}

    # ---- configuration ----------------------------------------------------------------------------------

    @classmethod
    def new_secret(cls, name: str) -> str:
        return new_signing_secret()

    @classmethod
    def clean_secrets(cls, data: dict[str, Any] | None) -> dict[str, Any]:
        cleaned = super().clean_secrets(data)
        url = cleaned.get("url", "")
        if urlsplit(url).scheme != "https":
            # The body carries phone numbers: never in clear text over the internet.
            raise SchemaError("secrets.url", f"must be an https:// URL, got {url!r}")
        secret = cleaned.get("signing_secret")
        if secret is not None:
            cls._check_secret(secret)
        return cleaned

    @staticmethod
    def _check_secret(secret: str) -> None:
        problem = 'must be "whsec_" followed by base64 of 24 to 64 random bytes (or "generate")'
        if not secret.startswith(SECRET_PREFIX):
            raise SchemaError("secrets.signing_secret", problem)
        try:
            size = len(signing_key(secret))
        except (binascii.Error, ValueError):
            raise SchemaError("secrets.signing_secret", problem) from None
        if not SECRET_BYTES[0] <= size <= SECRET_BYTES[1]:
            raise SchemaError("secrets.signing_secret", f"{problem}; it decodes to {size} bytes")

    @property
    def wanted_events(self) -> tuple[str, ...]:
        return tuple(self.settings.get("events") or EVENT_TYPES)

    # ---- inbound: none ----------------------------------------------------------------------------------

    def authenticate(self, request: HttpRequest, action: str) -> None:
        # A subscriber only receives: whatever arrives at /hooks/webhook/<id>/ is refused, signed or not.
        raise WebhookAuthError("no inbound endpoint")

    def handle(self, request: Request, action: str) -> Response:
        raise WebhookInputError("no inbound endpoint")  # unreachable: authenticate() refuses first

    # ---- routing: a subscriber is told about calls, it is never asked whose caller this is ---------------

    def answers_routing(self, query: RoutingQuery) -> bool:
        return False

    def lookup(self, query: RoutingQuery, timeout: float) -> RoutingAnswer | None:
        return None

    # ---- nothing to synchronise, nothing periodic, no recording playback of its own -----------------------

    def jobs_for_sync(self) -> list[JobSpec]:
        return []  # the events carry everything; there are no mappings to push

    def periodic_jobs(self, now: dt.datetime) -> list[JobSpec]:
        return []

    def accepts_playback_client_id(self, client_id: str) -> bool:
        return False  # recording_url is the permanent public link: no client id involved

    # ---- outbound -------------------------------------------------------------------------------------------

    def jobs_for(self, call: Call, notices: Sequence[Notice]) -> list[JobSpec]:
        wanted = self.wanted_events
        specs: list[JobSpec] = []
        for notice in notices:
            event = NOTICE_EVENTS.get(notice.kind)
            if event is None:
                continue
            if RINGING in wanted:
                # Every call begins with call.ringing, even one whose PBX reported no ring (answered at once by
                # a queue, or ended in the IVR): asked for with every notice, made once by its dedupe key, and
                # created before the notice's own message, so it goes out first.
                specs.append(JobSpec(KINDS[RINGING], f"{call.pk}:{RINGING}", {}, call, notice.order_key))
            if event == RINGING or event not in wanted:
                continue
            # One answered per extension that answers (a transfer is news); the others once per call.
            suffix = f":{notice.extension}" if event == ANSWERED else ""
            suffix += ":corrected" if notice.kind == "corrected" else ""
            specs.append(JobSpec(KINDS[event], f"{call.pk}:{event}{suffix}", {}, call, notice.order_key))
        return specs

    def perform(self, job: OutboundJob) -> str:
        event = EVENT_OF_KIND.get(job.kind)
        if event is None:
            return super().perform(job)
        if job.call is None:
            raise ProviderError(f"{job.kind} job {job.pk} has no call", permanent=True)
        call = job.call
        document = {
            "type": event,
            "timestamp": self._occurred_at(call, event, job).astimezone(call.tenant.tz).isoformat(),
            "data": call_data(call),
        }
        response = self.send(self.message_id(job), document)
        return f"HTTP {response.status_code} {response.text[:200]}".strip()

    def message_id(self, job: OutboundJob) -> str:
        """Stable for every retry of one job, unguessable, and unique across installations."""
        seed = f"{self.connection.public_id}:{job.pk}".encode()
        return "msg_" + hashlib.sha256(seed).hexdigest()[:32]

    @staticmethod
    def _occurred_at(call: Call, event: str, job: OutboundJob) -> dt.datetime:
        if event == RINGING:
            moment = call.started_at
        elif event == ANSWERED:
            moment = call.answered_at
        elif event == COMPLETED:
            moment = call.ended_at or call.final_at
        else:
            moment = Recording.objects.filter(call=call).values_list("stored_at", flat=True).first()
        return moment or job.created_at

    def send(self, message_id: str, document: dict[str, Any]) -> Any:
        url, secret = self.secrets.get("url"), self.secrets.get("signing_secret")
        if not url or not secret:
            raise ProviderError(
                "url and signing_secret must both be set", permanent=True, flag_connection=True
            )
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body),
            "Callbridge-Schema-Version": SCHEMA_VERSION,
        }
        try:
            # A redirect is not followed: re-sending a signed body elsewhere, or turning it into a GET, is
            # not a delivery.
            return http.request(
                "POST",
                url,
                data=body,
                headers=headers,
                timeout=TIMEOUT,
                secrets=self.secret_values(),
                allow_redirects=False,
            )
        except OutboundError as exc:
            if exc.status == 410:
                raise ProviderError(
                    "the receiver answered 410 Gone: it asks for no more messages; fix or remove the connection",
                    status=410,
                    permanent=True,
                    flag_connection=True,
                    body=exc.body,
                ) from None
            if exc.kind == "status" and exc.permanent:
                # Standard Webhooks: any non-2xx is a failed attempt to retry, not a verdict on the message.
                raise ProviderError(
                    str(exc), status=exc.status, body=exc.body, retry_after=exc.retry_after
                ) from None
            raise

    def check_connection(self) -> CheckResult:
        """POSTs a signed `ping` message (its data is empty); a 2xx proves the URL, TLS and the receiver."""
        document = {"type": PING, "timestamp": timezone.now().isoformat(), "data": {}}
        try:
            response = self.send("msg_ping_" + pysecrets.token_hex(8), document)
        except (OutboundError, ProviderError) as exc:
            return CheckResult(False, f"The receiver did not accept a signed ping: {exc}", str(exc)[:500])
        return CheckResult(
            True, f"The receiver accepted a signed ping (HTTP {response.status_code}).", response.text[:500]
        )
