from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class SandboxConfig(AppConfig):
    name = "integrations.providers.sandbox"
    label = "sandbox"
    verbose_name = _("Sandbox (simulated providers)")
    default_auto_field = "django.db.models.BigAutoField"
