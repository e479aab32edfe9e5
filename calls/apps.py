from django.apps import AppConfig


class CallsConfig(AppConfig):
    name = "calls"
    verbose_name = "Call history"
    default_auto_field = "django.db.models.BigAutoField"
