"""Recordings: fetch from the PBX into storage, serve permanent links, purge after retention.

PBX links are temporary, single-use or IP-bound (Rostelecom get_record, Mango queries/recording/post) and may
appear minutes after the call; CRMs need a permanent link. So the portal downloads the file right after asking
the PBX adapter for a fresh link, keeps it in the `recordings` storage, and serves it at /records/<token>.
"""

from __future__ import annotations

import datetime as dt
import logging
import mimetypes
import tempfile
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.files import File
from django.core.files.storage import storages
from django.db import transaction
from django.utils import timezone

from calls import outbox
from calls.models import OutboundJob, Recording
from calls.services import recording_stored
from integrations.http import default_client
from integrations.providers.base import JobSpec, ProviderError, get_provider

logger = logging.getLogger("callbridge.recordings")

AUDIO_TYPES = ("audio/", "application/octet-stream", "binary/octet-stream")
SYNC_FETCH_TIMEOUT = (3.05, 8)
EXTENSIONS = {
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/ogg": "ogg",
}


def storage() -> Any:
    return storages["recordings"]


def normalise_content_type(content_type: str, link: str = "") -> str:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in {"audio/mp3", "audio/x-mp3", "audio/mpeg3"}:
        return "audio/mpeg"
    if media in {"", "application/octet-stream", "binary/octet-stream"}:
        guessed = mimetypes.guess_type(link.split("?", 1)[0])[0] or "audio/mpeg"
        return "audio/mpeg" if guessed in {"audio/mp3", "audio/x-mp3"} else guessed
    return media


def fetch_recording(job: OutboundJob, timeout: Any = None) -> str:
    """The `recording.fetch` job: a fresh link from the PBX, then a streamed, size-capped download."""
    recording = Recording.objects.select_related("call__tenant", "call__pbx_connection").get(
        pk=job.payload["recording"]
    )
    return fetch(recording, timeout=timeout)


def fetch(recording: Recording, timeout: Any = None) -> str:
    if recording.state in {Recording.STORED, Recording.PURGED}:
        return f"already {recording.state}"
    Recording.objects.filter(pk=recording.pk, state__in=[Recording.EXPECTED, Recording.UNAVAILABLE]).update(
        state=Recording.FETCHING
    )
    adapter = get_provider(recording.call.pbx_connection)
    link = adapter.recording_link(recording)  # right before downloading: links are single-use
    call = recording.call
    with tempfile.SpooledTemporaryFile(max_size=4 * 1024 * 1024) as spool:
        content_type, size = default_client().download(
            link,
            spool,
            max_bytes=settings.RECORDING_MAX_BYTES,
            timeout=timeout or (3.05, 60),
            secrets=adapter.secret_values(),
            allowed_content_types=AUDIO_TYPES,
        )
        content_type = normalise_content_type(content_type, link)
        suffix = EXTENSIONS.get(content_type, "mp3")
        started = call.started_at or timezone.now()
        name = f"{call.tenant.slug}/{started:%Y/%m/%d}/{recording.token}.{suffix}"
        spool.seek(0)
        stored_name = storage().save(name, File(spool, name=name))
    with transaction.atomic():
        updated = (
            Recording.objects.filter(pk=recording.pk)
            .exclude(state=Recording.STORED)
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
    return f"stored {size} bytes ({content_type})"


def recording_unavailable(job: OutboundJob, reason: str) -> None:
    """The fetch job gave up (window over, or a permanent refusal): the recording is unavailable, with why."""
    Recording.objects.filter(pk=job.payload.get("recording")).exclude(
        state__in=[Recording.STORED, Recording.PURGED]
    ).update(state=Recording.UNAVAILABLE, reason=reason[:2000])


def fetch_again(recording: Recording) -> OutboundJob | None:
    """Admin action: queue a new fetch (a new job, so the old one's history stays)."""
    if recording.state in {Recording.STORED}:
        return None
    Recording.objects.filter(pk=recording.pk).update(state=Recording.EXPECTED, reason="")
    stamp = timezone.now().strftime("%Y%m%d%H%M%S%f")
    spec = JobSpec("recording.fetch", f"recording:{recording.pk}:again:{stamp}", {"recording": recording.pk})
    with transaction.atomic():
        outbox.create_jobs(recording.call.pbx_connection, [spec], recording.call)
    return OutboundJob.objects.filter(dedupe_key=spec.dedupe_key).first()


def try_fetch_now(recording: Recording) -> bool:
    """One bounded synchronous attempt for a playback request that came before the worker stored the file."""
    if recording.state not in {Recording.EXPECTED, Recording.FETCHING}:
        return False
    if not cache.add(f"recording:syncfetch:{recording.pk}", 1, 30):
        return False  # another request is already trying
    try:
        fetch(recording, timeout=SYNC_FETCH_TIMEOUT)
        return True
    except (ProviderError, Exception) as exc:
        logger.info("recording %s not available yet: %s", recording.pk, exc)
        Recording.objects.filter(pk=recording.pk, state=Recording.FETCHING).update(state=Recording.EXPECTED)
        return False


def purge_expired(now: dt.datetime | None = None) -> int:
    """Delete stored files older than their tenant's retention_days and mark them purged (daily task)."""
    now = now or timezone.now()
    purged = 0
    candidates = Recording.objects.filter(state=Recording.STORED, call__tenant__retention_days__isnull=False)
    for recording in candidates.select_related("call__tenant").iterator():
        reference = recording.call.started_at or recording.stored_at
        if reference is None or reference > now - dt.timedelta(days=recording.call.tenant.retention_days):
            continue
        if recording.file:
            try:
                storage().delete(recording.file)
            except OSError as exc:
                logger.warning("recording %s: could not delete %s: %s", recording.pk, recording.file, exc)
                continue
        Recording.objects.filter(pk=recording.pk).update(state=Recording.PURGED, purged_at=now, file="")
        purged += 1
    return purged
