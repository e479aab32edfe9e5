from django.urls import re_path

from integrations.invitations import invitation
from integrations.views import HookView

_providers = "[a-z0-9_]+"  # checked against the registry by the view

urlpatterns = [
    re_path(
        r"^invitation/(?P<uidb64>[A-Za-z0-9_-]+)/(?P<token>[A-Za-z0-9-]+)/$", invitation, name="invitation"
    ),
    re_path(rf"^hooks/(?P<provider>{_providers})/(?P<public_id>[A-Za-z0-9_-]+)/$", HookView.as_view()),
    re_path(
        rf"^hooks/(?P<provider>{_providers})/(?P<public_id>[A-Za-z0-9_-]+)/(?P<action>[A-Za-z0-9_/.-]+)$",
        HookView.as_view(),
        name="hook",
    ),
]
