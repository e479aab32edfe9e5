"""What we send RetailCRM about calls: `telephony/call/event` (pop-up cards and their hangup) and the call
history upload `telephony/calls/upload` (at most 50 calls a request), built from notices and the call's state.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from integrations.models import ExtensionMapping, ExternalPhoneSiteCode
from integrations.providers.base import JobSpec, Notice, ProviderError
from integrations.providers.retailcrm.api import UPLOAD_BATCH, RetailCrmClient, RetailCrmError, _user_id

if TYPE_CHECKING:
    from calls.models import Call, OutboundJob, Recording

logger = logging.getLogger("callbridge.retailcrm")


# A caller who withheld their number. RetailCRM documents `phone` as required in call/event and always present in
# calls/upload, and no value for "no number"; "anonymous" is what PBXs themselves write for a withheld caller id
# (the SIP convention), matches no customer, and keeps the card and the history entry (docs/providers/retailcrm.md).
ANONYMOUS_PHONE = "anonymous"
EVENT = "retailcrm.event"
HANGUP = "retailcrm.hangup"
UPLOAD = "retailcrm.upload"
# calls[].result and the event's hangupStatus are two different enums (digest §2.4, §4): note "no answered".
UPLOAD_RESULT = {
    "answered": "answered",
    "missed": "no answer",
    "cancelled": "no answer",
    "busy": "busy",
    "no_answer": "no answer",
    "not_available": "failed",
    "not_allowed": "not allowed",
    "failed": "failed",
    "unknown": "unknown",
}
HANGUP_STATUS = {
    "answered": "answered",
    "missed": "no answered",
    "cancelled": "cancel",
    "busy": "busy",
    "no_answer": "no answered",
    "not_available": "failed",
    "not_allowed": "failed",
    "failed": "failed",
    "unknown": "failed",
}


class RetailCrmMessages:
    """Call messages of RetailCrmProvider: notices to jobs, and sending them."""

    def jobs_for(self, call: Call, notices: Sequence[Notice]) -> list[JobSpec]:
        specs: list[JobSpec] = []
        if self.settings.get("send_events"):
            specs += self._event_specs(call, notices)
        for notice in notices:
            if notice.kind == "completed":
                specs.append(
                    JobSpec(UPLOAD, f"upload:{call.pk}", {}, call, notice.order_key, self._upload_due_at())
                )
        return specs

    def _event_specs(self, call: Call, notices: Sequence[Notice]) -> list[JobSpec]:
        specs: list[JobSpec] = []
        ringing: dict[str, list[str]] = {}
        completed = next((n for n in notices if n.kind == "completed"), None)
        for n in notices:
            if not n.extension:
                continue  # RetailCRM shows a card to extension codes; without one there is nobody to tell
            if n.kind == "ringing":
                ringing.setdefault(n.order_key, []).append(n.extension)
            elif n.kind == "dialing":
                specs.append(
                    JobSpec(
                        EVENT,
                        f"event:{call.pk}:out",
                        {"type": "out", "codes": [n.extension]},
                        call,
                        n.order_key,
                    )
                )
            elif n.kind == "leg_cancelled" and not (completed and completed.extension == n.extension):
                payload = {"type": "hangup", "codes": [n.extension], "leg": "cancelled"}
                specs.append(JobSpec(HANGUP, f"hangup:{call.pk}:{n.extension}", payload, call, n.order_key))
            elif n.kind == "leg_completed":
                # A transfer: the employee who talked first gets a hangup of their own (hangupStatus from the
                # call's result, "answered"), which closes their card; hangup events make no history entry.
                payload = {"type": "hangup", "codes": [n.extension], "leg": "transferred"}
                specs.append(JobSpec(HANGUP, f"hangup:{call.pk}:{n.extension}", payload, call, n.order_key))
            elif n.kind == "completed":
                payload = {"type": "hangup", "codes": [n.extension], "leg": "completed"}
                specs.append(JobSpec(HANGUP, f"hangup:{call.pk}:{n.extension}", payload, call, n.order_key))
        for order_key, codes in ringing.items():
            codes = list(dict.fromkeys(codes))
            specs.append(
                JobSpec(
                    EVENT, f"event:{call.pk}:in:{order_key}", {"type": "in", "codes": codes}, call, order_key
                )
            )
        return specs

    def _upload_due_at(self) -> dt.datetime | None:
        """Immediate: now. Periodic: the next multiple of the interval, so every call that completed in one interval
        is due at the same instant and the relay claims them together, up to 50 a request."""
        if self.settings.get("upload_strategy") != "periodic":
            return None
        interval = int(self.settings.get("upload_interval_minutes") or 10) * 60
        boundary = (int(timezone.now().timestamp()) // interval + 1) * interval
        return dt.datetime.fromtimestamp(boundary, tz=dt.UTC)

    def _site_codes(self) -> dict[str, str]:
        return dict(
            ExternalPhoneSiteCode.objects.filter(
                crm_connection=self.connection, external_phone__tenant_id=self.connection.tenant_id
            )
            .exclude(code="")
            .values_list("external_phone__number", "code")
        )

    def _user_ids(self) -> dict[str, str]:
        return dict(
            ExtensionMapping.objects.filter(
                crm_connection=self.connection, extension__tenant_id=self.connection.tenant_id
            ).values_list("extension__number", "crm_user_id")
        )

    def event_for(self, job: OutboundJob, site_codes: dict[str, str] | None = None) -> dict[str, Any] | None:
        """The call/event document for one event job, from the call's state now; None when there is nobody to
        show it to."""
        call = job.call
        codes = [c for c in job.payload.get("codes") or [] if c]
        if call is None or not codes:
            return None
        phone = call.client_phone or call.client_phone_raw or ANONYMOUS_PHONE
        event: dict[str, Any] = {
            "phone": phone,
            "type": job.payload["type"],
            "codes": codes,
            "callExternalId": call.provider_call_id,
        }
        if event["type"] == "hangup":
            lost_to_colleague = job.payload.get("leg") == "cancelled" and call.answered_extensions
            event["hangupStatus"] = (
                "cancel" if lost_to_colleague else HANGUP_STATUS.get(call.result, "failed")
            )
        if call.external_phone:
            event["externalPhone"] = call.external_phone
            site = (site_codes if site_codes is not None else self._site_codes()).get(call.external_phone)
            if site:
                event["site"] = site
        return event

    def _send_event(self, job: OutboundJob) -> str:
        event = self.event_for(job)
        if event is None:
            return "skipped: no extension to show the card to"
        answer = self.client().call_event(event)
        unknown = {k: answer[k] for k in ("notExistCodes", "notExistUsers") if answer.get(k)}
        if unknown:
            logger.warning("retailcrm %s: call event for unknown codes/users %s", self.connection, unknown)
            return f"sent; {unknown}"
        return "sent"

    def upload_item(
        self,
        call: Call,
        user_ids: dict[str, str] | None = None,
        site_codes: dict[str, str] | None = None,
        recordings: dict[int, Recording] | None = None,
    ) -> dict[str, Any]:
        """One calls[] element (digest §2.5), from the call's current state. The lookups may be passed in, loaded
        once for a whole batch."""
        user_ids = self._user_ids() if user_ids is None else user_ids
        site_codes = self._site_codes() if site_codes is None else site_codes
        tz = self.connection.tenant.tz
        started = call.started_at or call.ended_at or call.created_at
        extension = call.responsible_extension
        item: dict[str, Any] = {
            "date": timezone.localtime(started, tz).strftime("%Y-%m-%d %H:%M:%S"),
            "type": call.direction,
            "phone": call.client_phone or call.client_phone_raw or ANONYMOUS_PHONE,
            "result": UPLOAD_RESULT.get(call.result, "unknown"),
            "duration": int(call.talk_seconds or 0),
            "durationWaiting": int(call.wait_seconds or 0),
            "externalId": call.provider_call_id,
        }
        if extension:
            item["code"] = extension
            if user_ids.get(extension):
                item["userId"] = _user_id(user_ids[extension])
        if call.external_phone:
            item["externalPhone"] = call.external_phone
            if site_codes.get(call.external_phone):
                item["site"] = site_codes[call.external_phone]
        recording = None
        if call.recording_expected:
            recording = (
                recordings.get(call.pk) if recordings is not None else getattr(call, "recording", None)
            )
        if recording is not None and recording.state != recording.UNAVAILABLE:
            item["recordUrl"] = recording.public_url
        return item

    def perform_batch(self, jobs: list[OutboundJob]) -> dict[int, str | Exception]:
        """Upload calls, at most 50 a request. Never raises: a failure of one request is the result of the jobs it
        carried, so the requests that went through stay sent."""
        results: dict[int, str | Exception] = {}
        uploads = [job for job in jobs if job.kind == UPLOAD]
        for job in jobs:
            if job.kind != UPLOAD:
                try:
                    results[job.pk] = self.perform(job)
                except Exception as exc:
                    results[job.pk] = exc
        if not uploads:
            return results
        from calls.models import Recording

        user_ids, site_codes = self._user_ids(), self._site_codes()
        recordings = {
            r.call_id: r for r in Recording.objects.filter(call_id__in=[j.call_id for j in uploads])
        }
        items: dict[str, dict[str, Any]] = {}  # externalId → item (a call resent twice goes once)
        carried: dict[str, list[int]] = {}
        for job in uploads:
            call = job.call
            if call is None or not call.is_external or not call.final_for_crm:
                results[job.pk] = "skipped: not an external call final for CRMs"
                continue
            try:
                item = self.upload_item(call, user_ids, site_codes, recordings)
            except Exception as exc:  # a broken call must not hold back the others
                results[job.pk] = ProviderError(f"cannot build the upload: {exc}", permanent=True)
                continue
            items.setdefault(item["externalId"], item)
            carried.setdefault(item["externalId"], []).append(job.pk)
        client = self.client()
        stop: Exception | None = None
        for chunk in _chunks(list(items.values()), UPLOAD_BATCH):
            if stop is None:
                outcomes = self._upload(client, chunk)
                # The CRM, the key or the rate limit failed a request, not one of its calls: the next requests
                # would fail alike, so their calls get the same outcome and are retried later.
                stop = next((o for o in outcomes.values() if _not_the_calls_fault(o)), None)
            else:
                outcomes = dict.fromkeys((item["externalId"] for item in chunk), stop)
            for external_id, outcome in outcomes.items():
                for pk in carried[external_id]:
                    results[pk] = outcome
        return results

    def _upload(
        self, client: RetailCrmClient, items: list[dict[str, Any]], *, split: bool = True
    ) -> dict[str, str | Exception]:
        """Upload one request's worth; on a validation error, leave out the items the CRM named and send the rest
        again, or, when it named none, send each item alone so only the bad ones fail."""
        ids = [item["externalId"] for item in items]
        try:
            answer = client.upload_calls(items)
        except RetailCrmError as exc:
            if not exc.validation or len(items) == 1 or not split:
                return dict.fromkeys(ids, exc)
            logger.warning(
                "retailcrm %s: upload of %s calls rejected (%s); splitting", self.connection, len(items), exc
            )
            return self._split(client, items, exc)
        except Exception as exc:
            return dict.fromkeys(ids, exc)
        duplicates = {str(d) for d in answer.get("duplicateCalls") or []}
        processed = answer.get("processedCallsCount")
        return {
            external_id: (
                "already in RetailCRM (duplicateCalls)"
                if external_id in duplicates
                else f"uploaded ({processed} in batch)"
            )
            for external_id in ids
        }

    def _split(
        self, client: RetailCrmClient, items: list[dict[str, Any]], exc: RetailCrmError
    ) -> dict[str, str | Exception]:
        results: dict[str, str | Exception] = {}
        bad = {i: m for i, m in _bad_indexes(exc.errors).items() if i < len(items)}
        rest = items
        if bad:
            for index, message in bad.items():
                external_id = items[index]["externalId"]
                results[external_id] = RetailCrmError(
                    f"RetailCRM rejected the call: {message}",
                    permanent=True,
                    validation=True,
                    status=exc.status,
                )
            rest = [item for i, item in enumerate(items) if i not in bad]
            if not rest:
                return results
            again = self._upload(client, rest, split=False)
            still_invalid = [r for r in again.values() if isinstance(r, RetailCrmError) and r.validation]
            if not still_invalid:
                return {**results, **again}
        for position, item in enumerate(rest):
            outcome = self._upload(client, [item], split=False)[item["externalId"]]
            results[item["externalId"]] = outcome
            if _not_the_calls_fault(outcome):
                # The CRM or the key is the problem, not this call: the rest would fail alike; retry them later.
                for later in rest[position + 1 :]:
                    results[later["externalId"]] = outcome
                break
        return results


def _not_the_calls_fault(outcome: str | Exception) -> bool:
    return isinstance(outcome, Exception) and not (isinstance(outcome, RetailCrmError) and outcome.validation)


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _bad_indexes(errors: Any) -> dict[int, str]:
    """Which items of a rejected upload the CRM complained about, when its errors name them (`calls[3].date`,
    `calls[3][date]`, `3.date`); {} when they do not."""
    found: dict[int, str] = {}
    pattern = re.compile(r"\[(\d+)\]|^(\d+)(?=[.\[]|$)")
    pairs: list[tuple[str, str]] = []
    if isinstance(errors, dict):
        pairs = [(str(k), f"{k}: {v}") for k, v in errors.items()]
    elif isinstance(errors, list):
        pairs = [(str(e), str(e)) for e in errors]
    for where, message in pairs:
        match = pattern.search(where)
        if not match:
            return {}  # one complaint we cannot place: trust none of them
        index = int(match.group(1) or match.group(2))
        found[index] = f"{found[index]}; {message}" if index in found else message
    return found
