from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Tenants and connections"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # portal is no app of its own; its system checks are registered with the first app that loads.
        import portal.checks  # noqa: F401
