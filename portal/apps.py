from django.contrib.admin.apps import AdminConfig


class CallbridgeAdminConfig(AdminConfig):
    """django.contrib.admin with the Callbridge site (dashboard index): admin.site is a CallbridgeAdminSite."""

    default_site = "portal.admin_site.CallbridgeAdminSite"
