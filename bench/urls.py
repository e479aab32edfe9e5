"""The project's URLs plus a bare view taking the same POST, for benchmarks run through a real server: both go
through the same server, middleware and URL resolver (RELIABILITY.md §6.1)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def bare_view(request: HttpRequest) -> JsonResponse:
    request.body  # noqa: B018 - reads the POST body, as the webhook does
    return JsonResponse({"result": 0, "resultMessage": "ok"})


urlpatterns = [
    path("bench/bare", bare_view),
    path("", include("portal.urls")),
]
