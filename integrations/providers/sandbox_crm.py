"""Sandbox CRM: a simulated CRM inside the portal, for trying the portal without a CRM account.

Every message the portal sends it (pop-ups, call completions, history entries, recording links) goes through the
real outbox and worker like any CRM's, and is delivered into its inbox (SandboxMessage), which the connection's
"Sandbox inbox" admin page shows as a CRM would: whose card opened, how the call ended, the history line, the
recording link. It answers routing questions from a small editable table (SandboxContact: phone → caller name and
responsible extension), read in the routing service's own thread, and places click-to-call from its page. The
delivery is in-process: the far end is this portal's database, and the SSRF guard refuses loopback. Refused
unless SANDBOX_ENABLED.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from calls.models import Call, OutboundJob, Recording
from integrations.providers.base import (
    FINAL,
    POPUP,
    CheckResult,
    CrmProvider,
    JobSpec,
    Notice,
    ProviderError,
    RoutingAnswer,
    RoutingQuery,
)
from integrations.providers.sandbox import DISABLED_MESSAGE, enabled, require_enabled
from integrations.providers.sandbox.models import SandboxContact, SandboxMessage

KIND_POPUP = "sandbox_crm.popup"
# Closing a colleague's card comes with the end of the call, so it must not expire with it as pop-ups do.
KIND_CARD_CLOSED = "sandbox_crm.card_closed"
KIND_COMPLETED = "sandbox_crm.completed"
KIND_HISTORY = "sandbox_crm.history"
KIND_RECORDING = "sandbox_crm.recording"
# History entries follow the completion of the same call.
HISTORY_SUFFIX = "~h"

POPUP_TEXT = {
    "ringing": "Incoming call from {client}{name}: card opens at {ext}",
    "dialing": "{ext} is calling {client}{name}: card opens",
    "answered": "{ext} answered the call with {client}{name}",
    "leg_cancelled": "Card at {ext} closes: someone else took the call from {client}, or the caller hung up",
}
DIRECTION_WORDS = {"in": "Incoming", "out": "Outgoing", "internal": "Internal", "": "Call"}


def contact_for(connection: Any, phone: str) -> SandboxContact | None:
    return SandboxContact.objects.filter(crm_connection=connection, phone=phone).first() if phone else None


def inbox(connection: Any, kind: str, text: str, call: Call | None = None, **data: Any) -> SandboxMessage:
    return SandboxMessage.objects.create(
        crm_connection=connection,
        kind=kind,
        pbx_call_id=call.provider_call_id if call else str(data.get("pbx_call_id", ""))[:200],
        extension=str(data.get("extension") or "")[:6],
        text=text[:500],
        data=data,
    )


class SandboxCrmProvider(CrmProvider):
    key = "sandbox_crm"
    admin_page = "integrations.providers.sandbox.views.inbox_page"
    admin_page_title = "Sandbox inbox"
    job_kinds = {
        KIND_POPUP: POPUP,
        KIND_CARD_CLOSED: FINAL,
        KIND_COMPLETED: FINAL,
        KIND_HISTORY: FINAL,
        KIND_RECORDING: FINAL,
    }

    # ---- routing ----
    def answers_routing(self, query: RoutingQuery) -> bool:
        """Read the routing table here, in the routing service's own thread (lookup() may not use the
        database), and note the question in the inbox with the answer the CRM gives."""
        if not enabled():
            return False
        contact = contact_for(self.connection, query.caller)
        self._answer = RoutingAnswer(contact.extension, contact.name) if contact else None
        if contact:
            text = f"Whose caller is {query.caller}? {contact.name or 'unnamed'}, responsible {contact.extension or '-'}"
        else:
            text = f"Whose caller is {query.caller}? Not in the routing table"
        inbox(
            self.connection,
            SandboxMessage.ROUTING,
            text,
            pbx_call_id=query.provider_call_id,
            caller=query.caller,
            did=query.did,
            extension=contact.extension if contact else "",
            name=contact.name if contact else "",
        )
        return True

    def lookup(self, query: RoutingQuery, timeout: float) -> RoutingAnswer | None:
        return getattr(self, "_answer", None)

    # ---- outbound ----
    def jobs_for(self, call: Call, notices: Sequence[Notice]) -> list[JobSpec]:
        specs = []
        for notice in notices:
            payload = {"notice": notice.kind, "extension": notice.extension}
            if notice.kind in POPUP_TEXT:
                kind = KIND_CARD_CLOSED if notice.kind == "leg_cancelled" else KIND_POPUP
                key = f"{call.pk}:popup:{notice.kind}:{notice.extension}:{notice.order_key}"
                specs.append(JobSpec(kind, key, payload, call, notice.order_key))
            elif notice.kind == "completed":
                specs.append(JobSpec(KIND_COMPLETED, f"{call.pk}:completed", payload, call, notice.order_key))
                specs.append(
                    JobSpec(
                        KIND_HISTORY, f"{call.pk}:history", payload, call, notice.order_key + HISTORY_SUFFIX
                    )
                )
            elif notice.kind == "corrected":  # the sandbox shows the corrected completion as a new entry
                key = f"{call.pk}:completed:corrected"
                specs.append(JobSpec(KIND_COMPLETED, key, payload, call, notice.order_key))
            elif notice.kind == "recording_stored":
                specs.append(JobSpec(KIND_RECORDING, f"{call.pk}:recording", payload, call, notice.order_key))
        return specs

    def perform(self, job: OutboundJob) -> str:
        require_enabled()
        call = job.call
        if job.kind not in self.job_kinds:
            return super().perform(job)
        if call is None:
            raise ProviderError(f"{job.kind} job {job.pk} has no call", permanent=True)
        client = call.client_phone or call.client_phone_raw or "unknown number"
        contact = contact_for(self.connection, call.client_phone)
        name = f" ({contact.name})" if contact and contact.name else ""
        extension = str(job.payload.get("extension") or "")
        if job.kind in {KIND_POPUP, KIND_CARD_CLOSED}:
            notice = job.payload["notice"]
            text = POPUP_TEXT[notice].format(client=client, name=name, ext=extension or "-")
            message = inbox(
                self.connection, SandboxMessage.POPUP, text, call, notice=notice, extension=extension
            )
        elif job.kind == KIND_COMPLETED:
            text = (
                f"{DIRECTION_WORDS.get(call.direction, 'Call')} call with {client}{name} completed: {call.result}, "
                f"talk {call.talk_seconds or 0} s, responsible {call.responsible_extension or '-'}"
                + (", recording to follow" if call.recording_expected else "")
            )
            message = inbox(
                self.connection,
                SandboxMessage.COMPLETED,
                text,
                call,
                result=call.result,
                talk_seconds=call.talk_seconds or 0,
                extension=call.responsible_extension,
                recording_expected=bool(call.recording_expected),
            )
        elif job.kind == KIND_HISTORY:
            tz = call.tenant.tz
            started = call.started_at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if call.started_at else "-"
            text = (
                f"History: {started} {DIRECTION_WORDS.get(call.direction, 'Call').lower()} {client}{name}, "
                f"{call.result}, waited {call.wait_seconds or 0} s, talked {call.talk_seconds or 0} s, "
                f"rang {', '.join(call.rang_extensions or []) or '-'}, "
                f"answered {', '.join(call.answered_extensions or []) or '-'}"
            )
            message = inbox(
                self.connection,
                SandboxMessage.HISTORY,
                text,
                call,
                started_at=started,
                direction=call.direction,
                result=call.result,
                wait_seconds=call.wait_seconds or 0,
                talk_seconds=call.talk_seconds or 0,
                rang=list(call.rang_extensions or []),
                answered=list(call.answered_extensions or []),
                extension=call.responsible_extension,
            )
        else:
            recording = Recording.objects.filter(call=call).first()
            if recording is None or recording.state != Recording.STORED:
                return "skipped: the recording is not stored"
            text = f"Recording of the call with {client}{name}: {recording.public_url}"
            message = inbox(
                self.connection,
                SandboxMessage.RECORDING,
                text,
                call,
                link=recording.public_url,
                content_type=recording.content_type,
                size=recording.size,
            )
        return f"delivered to the sandbox inbox (message {message.pk})"

    def check_connection(self) -> CheckResult:
        if not enabled():
            return CheckResult(False, DISABLED_MESSAGE)
        contacts = self.connection.sandbox_contacts.count()
        messages = self.connection.sandbox_messages.count()
        return CheckResult(
            True,
            f"Sandbox CRM (simulated in this portal): {contacts} routing-table rows, {messages} messages",
        )
