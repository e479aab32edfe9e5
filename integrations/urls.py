from django.urls import re_path

from integrations.providers.base import REGISTRY
from integrations.views import HookView

_providers = "|".join(REGISTRY)

urlpatterns = [
    re_path(rf"^hooks/(?P<provider>{_providers})/(?P<public_id>[A-Za-z0-9_-]+)/$", HookView.as_view()),
    re_path(
        rf"^hooks/(?P<provider>{_providers})/(?P<public_id>[A-Za-z0-9_-]+)/(?P<action>[A-Za-z0-9_/.-]+)$",
        HookView.as_view(),
        name="hook",
    ),
]
