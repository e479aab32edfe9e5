from django.contrib import admin
from django.urls import include, path

from portal import health, metrics

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("i18n/", include("django.conf.urls.i18n")),  # set_language: the admin header's language switch
    path("admin/", admin.site.urls),
    path("", include("integrations.urls")),
    path("", include("calls.urls")),
    path("", include("api.urls")),
    path("sandbox/", include("integrations.providers.sandbox.urls")),
]
