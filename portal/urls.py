from django.contrib import admin
from django.urls import include, path

from portal import health, metrics

admin.site.site_header = "Callbridge"
admin.site.site_title = "Callbridge"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("", include("integrations.urls")),
    path("", include("calls.urls")),
    path("", include("api.urls")),
    path("sandbox/", include("integrations.providers.sandbox.urls")),
]
