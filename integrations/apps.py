from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Tenants and connections"
    default_auto_field = "django.db.models.BigAutoField"
