"""Public recording links: /records/<token>. The recordings issue builds fetching, storage and serving."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseNotFound

from calls.models import Recording


def record(request: HttpRequest, token: str) -> HttpResponse:
    recording = Recording.objects.filter(token=token).first()
    if recording is None or recording.state == Recording.UNAVAILABLE:
        return HttpResponseNotFound("Not found")
    if recording.state == Recording.PURGED:
        return HttpResponse("Gone", status=410)
    response = HttpResponseNotFound("Recording not stored yet")
    response["Retry-After"] = "60"
    return response
