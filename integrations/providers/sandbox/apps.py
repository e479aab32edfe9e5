from __future__ import annotations

from django.apps import AppConfig


class SandboxConfig(AppConfig):
    name = "integrations.providers.sandbox"
    label = "sandbox"
    verbose_name = "Sandbox (simulated providers)"
    default_auto_field = "django.db.models.BigAutoField"
