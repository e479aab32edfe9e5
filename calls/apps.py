from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CallsConfig(AppConfig):
    name = "calls"
    verbose_name = _("Call history")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from calls import activity_log

        activity_log.connect()
