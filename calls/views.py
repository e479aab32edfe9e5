"""Permanent recording links: GET/HEAD /records/<token>.

Streams from storage (never the whole file in memory) with Content-Type, Content-Length, Accept-Ranges, a 206
for one byte range and a 416 for an unsatisfiable one, ETag and Last-Modified. An optional `clientId` must
belong to a CRM connection of the call's tenant that plays links that way (RetailCRM). Not stored yet: one
bounded synchronous fetch, else 404 with Retry-After; purged: 410; unavailable or unknown: 404.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import IO

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.http import http_date, parse_http_date_safe
from django.views.decorators.http import require_http_methods

from calls.models import PlaybackLog, Recording
from calls.recordings import storage, try_fetch_now
from integrations.models import CrmConnection
from integrations.providers.base import get_provider

logger = logging.getLogger("callbridge.records")

CHUNK = 64 * 1024
RETRY_AFTER_SECONDS = 60
_PERIODS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def client_address(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR", "") or ""


def throttled(address: str) -> bool:
    """RECORDS_THROTTLE per client address, counted on the shared cache (every process together)."""
    count, period = settings.RECORDS_THROTTLE.split("/")
    seconds = _PERIODS[period]
    key = f"records:throttle:{address}"
    cache.add(key, 0, seconds)
    try:
        return cache.incr(key) > int(count)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, seconds)
        return False


def _client_id_allowed(recording: Recording, client_id: str) -> bool:
    for crm in CrmConnection.objects.filter(tenant_id=recording.call.tenant_id, active=True):
        if get_provider(crm).accepts_playback_client_id(client_id):
            return True
    return False


def _plain(status: int, text: str, retry_after: int | None = None) -> HttpResponse:
    response = HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


def _log(recording: Recording, request: HttpRequest, status: int) -> None:
    PlaybackLog.objects.create(
        recording=recording,
        address=client_address(request) or None,
        user_agent=request.headers.get("User-Agent", "")[:300],
        status=status,
        client_id_used="clientId" in request.GET,
    )


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive for one satisfiable byte range; None to serve the whole file (no header, or
    several ranges); "unsatisfiable" for a range outside the file."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _stream(handle: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    try:
        handle.seek(start)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        handle.close()


@require_http_methods(["GET", "HEAD"])
def record(request: HttpRequest, token: str) -> HttpResponse:
    if throttled(client_address(request)):
        return _plain(429, "Too many requests", retry_after=60)
    recording = Recording.objects.select_related("call").filter(token=token).first()
    if recording is None:
        return _plain(404, "Not found")
    client_id = request.GET.get("clientId")
    if client_id is not None and not _client_id_allowed(recording, client_id):
        logger.warning("records: clientId not accepted for recording %s", recording.pk)
        _log(recording, request, 403)
        return _plain(403, "Forbidden")
    if recording.state == Recording.PURGED:
        _log(recording, request, 410)
        return _plain(410, "Gone: the recording was deleted after the retention period")
    if recording.state == Recording.UNAVAILABLE:
        _log(recording, request, 404)
        return _plain(404, "Not found")
    stored_now = recording.state == Recording.STORED or (try_fetch_now(recording) and _reload(recording))
    if not stored_now:
        _log(recording, request, 404)
        return _plain(404, "Recording not stored yet", retry_after=RETRY_AFTER_SECONDS)
    return _serve(request, recording)


def _reload(recording: Recording) -> bool:
    recording.refresh_from_db()
    return recording.state == Recording.STORED


def _serve(request: HttpRequest, recording: Recording) -> HttpResponse:
    size = recording.size if recording.size is not None else storage().size(recording.file)
    etag = f'"{recording.token[:16]}-{size}-{int(recording.stored_at.timestamp()) if recording.stored_at else 0}"'
    last_modified = int(recording.stored_at.timestamp()) if recording.stored_at else None
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Cache-Control": "private, max-age=3600"}
    if last_modified is not None:
        headers["Last-Modified"] = http_date(last_modified)
    if request.headers.get("If-None-Match") == etag or (
        last_modified is not None
        and "If-None-Match" not in request.headers
        and (parse_http_date_safe(request.headers.get("If-Modified-Since", "")) or -1) >= last_modified
    ):
        _log(recording, request, 304)
        return HttpResponse(status=304, headers=headers)
    wanted = parse_range(request.headers.get("Range", ""), size)
    if request.headers.get("If-Range") not in (None, etag):
        wanted = None
    if wanted == "unsatisfiable":
        _log(recording, request, 416)
        return HttpResponse(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = wanted if isinstance(wanted, tuple) else (0, size - 1)
    length = max(0, end - start + 1)
    status = 206 if isinstance(wanted, tuple) else 200
    headers["Content-Length"] = str(length)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    content_type = recording.content_type or "audio/mpeg"
    _log(recording, request, status)
    if request.method == "HEAD":
        return HttpResponse(status=status, headers=headers, content_type=content_type)
    body = _stream(storage().open(recording.file, "rb"), start, length)
    return StreamingHttpResponse(body, status=status, headers=headers, content_type=content_type)
