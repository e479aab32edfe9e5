from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = _("Tenants and connections")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # portal is no app of its own; its system checks are registered with the first app that loads.
        import portal.checks
        import portal.dbtime  # noqa: F401 - reads PostgreSQL timestamps with the C parser
