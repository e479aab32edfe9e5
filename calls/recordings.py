"""Recordings: fetch from the PBX into storage, serve permanent links, purge after retention.

PBX links are temporary, single-use or IP-bound (see each PBX adapter's recording_link) and may
appear minutes after the call; CRMs need a permanent link. So the portal downloads the file right after asking
the PBX adapter for a fresh link, keeps it in the `recordings` storage, and serves it at /records/<token>.
"""

from __future__ import annotations

import datetime as dt
import logging
import mimetypes
import secrets as pysecrets
import tempfile
import time
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from calls import outbox
from calls.models import OutboundJob, Recording
from calls.services import recording_stored
from integrations.http import OutboundError, default_client
from integrations.models import Tenant
from integrations.providers.base import JobSpec, ProviderError, get_provider
from portal import fastcache

logger = logging.getLogger("callbridge.recordings")

AUDIO_TYPES = ("audio/", "application/octet-stream", "binary/octet-stream")
# A PBX answers these while the file is not written yet (minutes after the call at peak), so they mean
# "try again later" for a recording, although the HTTP client calls a 404 permanent for an API.
NOT_READY_STATUSES = frozenset({404, 425})
FETCH_TIMEOUT = (3.05, 60)
# A playback request that finds the file not stored yet waits at most this long for one attempt.
SYNC_FETCH_TIMEOUT = (3.05, 8)
SYNC_FETCH_SECONDS = 15.0
SYNC_FETCH_LOCK_SECONDS = 30
SPOOL_IN_MEMORY_BYTES = 4 * 1024 * 1024
EXTENSIONS = {
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/ogg": "ogg",
}
MP3_ALIASES = {"audio/mp3", "audio/x-mp3", "audio/mpeg3", "audio/x-mpeg", "audio/x-mpeg-3"}


def storage() -> Any:
    return storages["recordings"]


def normalise_content_type(content_type: str, link: str = "") -> str:
    """The type the file is served with: mp3 aliases become audio/mpeg (some CRM players accept only that); a generic
    binary type is guessed from the link's file name."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in {"", "application/octet-stream", "binary/octet-stream"}:
        media = mimetypes.guess_type(link.split("?", 1)[0])[0] or "audio/mpeg"
    return "audio/mpeg" if media in MP3_ALIASES else media


class _Deadline:
    """A write-only wrapper that stops a download once its time is up: the read timeout bounds each read, not
    the whole transfer, and a playback request must not hang on a slow PBX."""

    def __init__(self, dest: IO[bytes], seconds: float) -> None:
        self.dest = dest
        self.until = time.monotonic() + seconds

    def write(self, data: bytes) -> int:
        if time.monotonic() > self.until:
            raise TimeoutError("the recording download took too long")
        return self.dest.write(data)


def fetch_recording(job: OutboundJob, timeout: Any = None) -> str:
    """The `recording.fetch` job: a fresh link from the PBX, then a streamed, size-capped download, stored
    only while the job's claim still holds its lease."""
    recording = Recording.objects.select_related("call__tenant", "call__pbx_connection").get(
        pk=job.payload["recording"]
    )
    return fetch(recording, timeout=timeout, job=job)


def fetch(
    recording: Recording,
    timeout: Any = None,
    deadline_seconds: float | None = None,
    job: OutboundJob | None = None,
) -> str:
    """Download the recording into storage and announce it once. Raises ProviderError/OutboundError with the
    outbox's verdict: "not ready yet" is transient, a refused address or an oversize file permanent."""
    if recording.state in {Recording.STORED, Recording.PURGED}:
        return f"already {recording.state}"
    Recording.objects.filter(pk=recording.pk, state__in=[Recording.EXPECTED, Recording.UNAVAILABLE]).update(
        state=Recording.FETCHING
    )
    try:
        with recording.call.pbx_connection.outbound_scope():  # the PBX connection's own allowed_networks
            stored_name, content_type, size = _download(recording, timeout, deadline_seconds)
    except Exception:
        # Back to "expected" while the outbox retries; the give-up handler marks it unavailable with why.
        Recording.objects.filter(pk=recording.pk, state=Recording.FETCHING).update(state=Recording.EXPECTED)
        raise
    try:
        with outbox.on_behalf_of(job) if job is not None else transaction.atomic():
            updated = (
                Recording.objects.filter(pk=recording.pk)
                .exclude(state__in=[Recording.STORED, Recording.PURGED])
                .update(
                    state=Recording.STORED,
                    file=stored_name,
                    content_type=content_type,
                    size=size,
                    stored_at=timezone.now(),
                    reason="",
                )
            )
            if updated:
                recording.refresh_from_db()
                recording_stored(recording)  # exactly once: only the fetch that stored it announces it
    except Exception:
        storage().delete(stored_name)  # rolled back: the retry downloads it again
        Recording.objects.filter(pk=recording.pk, state=Recording.FETCHING).update(state=Recording.EXPECTED)
        raise
    if not updated:
        # A concurrent fetch (the worker and a playback request) stored it first: keep one copy only.
        storage().delete(stored_name)
        return "already stored by another fetch"
    return f"stored {size} bytes ({content_type})"


def _download(recording: Recording, timeout: Any, deadline_seconds: float | None) -> tuple[str, str, int]:
    call = recording.call
    adapter = get_provider(call.pbx_connection)
    # A PBX simulated inside the portal hands the file over; any other gives a link, asked for right before
    # downloading because links are single-use.
    local = adapter.recording_content(recording)
    link = "" if local is not None else adapter.recording_link(recording)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
        dest: Any = _Deadline(spool, deadline_seconds) if deadline_seconds else spool
        if local is not None:
            content, content_type = local
            if len(content) > settings.RECORDING_MAX_BYTES:
                raise ProviderError(
                    f"recording of {len(content)} bytes is over RECORDING_MAX_BYTES", permanent=True
                )
            size = dest.write(content)
        else:
            try:
                content_type, size = default_client().download(
                    link,
                    dest,
                    max_bytes=settings.RECORDING_MAX_BYTES,
                    timeout=timeout or FETCH_TIMEOUT,
                    secrets=adapter.secret_values(),
                    allowed_content_types=AUDIO_TYPES,
                )
            except OutboundError as exc:
                if exc.status in NOT_READY_STATUSES:
                    raise ProviderError(
                        f"recording not ready yet: {exc}", status=exc.status, retry_after=exc.retry_after
                    ) from None
                raise
        content_type = normalise_content_type(content_type, link)
        suffix = EXTENSIONS.get(content_type, "mp3")
        started = call.started_at or timezone.now()
        # Not the link's token: a storage listing must not hand out working links.
        name = f"{call.tenant.slug}/{started:%Y/%m/%d}/{recording.pk}-{pysecrets.token_hex(8)}.{suffix}"
        spool.seek(0)
        return storage().save(name, File(spool, name=name)), content_type, size


def recording_unavailable(job: OutboundJob, reason: str) -> None:
    """The fetch job gave up (window over, or a permanent refusal): the recording is unavailable, with why."""
    Recording.objects.filter(pk=job.payload.get("recording")).exclude(
        state__in=[Recording.STORED, Recording.PURGED]
    ).update(state=Recording.UNAVAILABLE, reason=reason[:2000])


def fetch_again(recording: Recording) -> OutboundJob | None:
    """Admin action: queue a new fetch (a new job, so the old one's history stays). Nothing for a stored
    recording, nor for a purged one: retention deleted it on purpose."""
    if recording.state in {Recording.STORED, Recording.PURGED}:
        return None
    Recording.objects.filter(pk=recording.pk).update(state=Recording.EXPECTED, reason="")
    stamp = timezone.now().strftime("%Y%m%d%H%M%S%f")
    spec = JobSpec("recording.fetch", f"recording:{recording.pk}:again:{stamp}", {"recording": recording.pk})
    with transaction.atomic():
        outbox.create_jobs(recording.call.pbx_connection, [spec], recording.call)
    return OutboundJob.objects.filter(
        connection_ref=outbox.connection_ref(recording.call.pbx_connection), dedupe_key=spec.dedupe_key
    ).first()


def try_fetch_now(recording: Recording) -> bool:
    """One bounded synchronous attempt for a playback request that came before the worker stored the file.
    At most one attempt per recording every SYNC_FETCH_LOCK_SECONDS, whoever asks."""
    if recording.state not in {Recording.EXPECTED, Recording.FETCHING}:
        return False
    lock = f"recording:syncfetch:{recording.pk}"
    # No cache, no attempt: the player is told to come back (the worker's job keeps fetching).
    if not fastcache.guarded(
        lambda cache: cache.add(lock, 1, SYNC_FETCH_LOCK_SECONDS), False, "recording fetch lock"
    ):
        return False
    try:
        fetch(recording, timeout=SYNC_FETCH_TIMEOUT, deadline_seconds=SYNC_FETCH_SECONDS)
    except Exception as exc:  # the outbox job keeps trying; the player is told to come back later
        logger.info("recording %s not available yet: %s", recording.pk, exc)
        return False
    return True


def purge_expired(now: dt.datetime | None = None) -> int:
    """Delete stored files older than their tenant's retention_days and mark them purged (daily task)."""
    now = now or timezone.now()
    purged = 0
    for tenant in Tenant.objects.filter(retention_days__isnull=False):
        cutoff = now - dt.timedelta(days=tenant.retention_days)
        expired = Recording.objects.filter(state=Recording.STORED, call__tenant=tenant).filter(
            Q(call__started_at__lt=cutoff) | Q(call__started_at__isnull=True, stored_at__lt=cutoff)
        )
        # Ids first: updating rows while iterating a cursor over them is unsafe on SQLite.
        for pk, name in list(expired.values_list("pk", "file")):
            if name:
                try:
                    storage().delete(name)
                except Exception as exc:  # S3 and friends raise their own errors; the next run tries again
                    logger.warning("recording %s: could not delete %s: %s", pk, name, exc)
                    continue
            purged += Recording.objects.filter(pk=pk, state=Recording.STORED).update(
                state=Recording.PURGED, purged_at=now, file=""
            )
    return purged
