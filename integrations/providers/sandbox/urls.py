from __future__ import annotations

from django.urls import path

from integrations.providers.sandbox import views

_id = "<str:public_id>"

urlpatterns = [
    path(f"pbx/{_id}/directory", views.directory, name="sandbox_pbx_directory"),
    path(f"pbx/{_id}/calls/<str:call_id>", views.call_details, name="sandbox_pbx_call"),
    path(f"pbx/{_id}/recordings/<str:call_id>", views.recording, name="sandbox_pbx_recording"),
    path(f"pbx/{_id}/click-to-call", views.click_to_call, name="sandbox_pbx_click_to_call"),
]
