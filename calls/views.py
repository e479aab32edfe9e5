"""Permanent recording links: GET/HEAD /records/<token>.

Streams from storage (never the whole file in memory) with Content-Type, Content-Length, Accept-Ranges, a 206
for one byte range and a 416 for an unsatisfiable one, ETag and Last-Modified. An optional `clientId` must
belong to a CRM connection of the call's tenant that plays links that way (CrmProvider.accepts_playback_client_id). Not stored yet: one
bounded synchronous fetch, else 404 with Retry-After; purged: 410; unavailable or unknown: 404.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import time
from typing import IO

from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.http import http_date, parse_etags, parse_http_date_safe
from django.views.decorators.http import require_http_methods

from calls.models import PlaybackLog, Recording
from calls.recordings import storage, try_fetch_now
from integrations.models import CrmConnection
from integrations.providers.base import UnknownProvider, get_provider
from integrations.rates import parse_rate
from integrations.throttles import client_address, fail_open, hit

logger = logging.getLogger("callbridge.records")

CHUNK = 64 * 1024
RETRY_AFTER_SECONDS = 60
MAX_RANGE_DIGITS = 18  # 10^18 bytes is an exabyte: any longer number is no offset into a recording


def _valid_ip(address: str) -> str | None:
    # PostgreSQL's inet column refuses anything else (a unix-socket server may give an empty REMOTE_ADDR).
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def _now() -> float:
    return time.time()


def throttled(address: str) -> bool:
    """RECORDS_THROTTLE per client address, counted on the shared cache (every process together). It protects
    the portal, so a cache outage lets requests through (with a log line) rather than refusing every player."""
    limit, _seconds = parse_rate(settings.RECORDS_THROTTLE)
    count, _retry = fail_open(
        lambda: hit(f"records:throttle:{address}", settings.RECORDS_THROTTLE, _now()), (0, 0)
    )
    return count > limit


def _client_id_allowed(recording: Recording, client_id: str) -> bool:
    for crm in CrmConnection.objects.filter(tenant_id=recording.call.tenant_id, active=True):
        try:
            adapter = get_provider(crm)
        except UnknownProvider:
            continue
        if adapter.accepts_playback_client_id(client_id):
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
        address=_valid_ip(client_address(request)),
        user_agent=request.headers.get("User-Agent", "")[:300],
        status=status,
        client_id_used="clientId" in request.GET,
    )


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive for one satisfiable byte range; None to serve the whole file (no header, an
    invalid one, or several ranges); "unsatisfiable" for a range outside the file."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if len(first) > MAX_RANGE_DIGITS or len(last) > MAX_RANGE_DIGITS:
        # No file is that large; int() of thousands of digits raises ValueError (CPython's digit limit).
        return "unsatisfiable"
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # an invalid range is ignored (RFC 9110 §14.1.1), not refused
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


class FileRange:
    """The streamed body: `length` bytes from `start`, read a chunk at a time. StreamingHttpResponse calls
    close() when the response ends, even if the client went away before the first chunk."""

    def __init__(self, handle: IO[bytes], start: int, length: int) -> None:
        self.handle = handle
        self.remaining = length
        handle.seek(start)

    def __iter__(self) -> FileRange:
        return self

    def __next__(self) -> bytes:
        if self.remaining <= 0:
            raise StopIteration
        chunk = self.handle.read(min(CHUNK, self.remaining))
        if not chunk:
            raise StopIteration
        self.remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        self.handle.close()


@require_http_methods(["GET", "HEAD"])
def record(request: HttpRequest, token: str) -> HttpResponse:
    if throttled(client_address(request)):
        return _plain(429, "Too many requests", retry_after=60)
    recording = Recording.by_token(token)
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


def _etag(recording: Recording, size: int) -> str:
    # Not revealing the token: the ETag may end up in caches and logs the link never saw.
    stamp = recording.stored_at.isoformat() if recording.stored_at else ""
    digest = hashlib.sha256(f"{recording.pk}:{recording.link_version}:{size}:{stamp}".encode()).hexdigest()[
        :32
    ]
    return f'"{digest}"'


def _not_modified(request: HttpRequest, etag: str, last_modified: int | None) -> bool:
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        wanted = {tag.removeprefix("W/") for tag in parse_etags(if_none_match)}
        return "*" in wanted or etag in wanted
    since = parse_http_date_safe(request.headers.get("If-Modified-Since", ""))
    return last_modified is not None and since is not None and since >= last_modified


def _serve(request: HttpRequest, recording: Recording) -> HttpResponse:
    try:
        size = recording.size if recording.size is not None else storage().size(recording.file)
        handle = storage().open(recording.file, "rb") if request.method == "GET" else None
    except (FileNotFoundError, OSError) as exc:
        logger.error("records: recording %s is stored but its file is missing: %s", recording.pk, exc)
        _log(recording, request, 404)
        return _plain(404, "Not found")
    etag = _etag(recording, size)
    last_modified = int(recording.stored_at.timestamp()) if recording.stored_at else None
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Cache-Control": "private, max-age=3600"}
    if last_modified is not None:
        headers["Last-Modified"] = http_date(last_modified)
    status, start, end = 200, 0, size - 1
    if _not_modified(request, etag, last_modified):
        status = 304
    else:
        wanted = parse_range(request.headers.get("Range", ""), size)
        if request.headers.get("If-Range") not in (None, etag):
            wanted = None  # the client's partial copy is of another version: send the whole file
        if wanted == "unsatisfiable":
            status = 416
            headers["Content-Range"] = f"bytes */{size}"
        elif isinstance(wanted, tuple):
            status, (start, end) = 206, wanted
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    _log(recording, request, status)
    if status in (304, 416) or handle is None:
        if handle is not None:
            handle.close()
        if status in (200, 206):  # HEAD: the headers a GET would have
            headers["Content-Length"] = str(max(0, end - start + 1))
        return HttpResponse(status=status, headers=headers, content_type=_content_type(recording, status))
    length = max(0, end - start + 1)
    headers["Content-Length"] = str(length)
    return StreamingHttpResponse(
        FileRange(handle, start, length),
        status=status,
        headers=headers,
        content_type=_content_type(recording),
    )


def _content_type(recording: Recording, status: int = 200) -> str:
    if status in (304, 416):
        return "text/plain; charset=utf-8"
    return recording.content_type or "audio/mpeg"
