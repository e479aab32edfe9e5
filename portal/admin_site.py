"""The admin site: Django's, with the tenant dashboard as its index page.

Tenant staff see their tenant's dashboard above the usual list of models; a user of several tenants, and a
superuser, pick the tenant (`?tenant=<id>`). The figures come from calls.dashboard.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _


class CallbridgeAdminSite(admin.AdminSite):
    site_header = "Callbridge"
    site_title = "Callbridge"
    index_title = _("Dashboard")
    index_template = "admin/callbridge/dashboard.html"

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        from calls.dashboard import tenant_dashboard
        from integrations.admin_scoping import is_superuser, readable_tenant_ids
        from integrations.models import Tenant

        tenants = Tenant.objects.order_by("name")
        if not is_superuser(request):
            tenants = tenants.filter(pk__in=readable_tenant_ids(request))
        tenants = list(tenants)
        chosen = None
        wanted = request.GET.get("tenant", "")
        if wanted.isdigit():
            chosen = next((t for t in tenants if t.pk == int(wanted)), None)
        elif len(tenants) == 1:
            chosen = tenants[0]
        context: dict[str, Any] = {"dashboard_tenants": tenants, "dashboard_tenant": chosen}
        if chosen is not None:
            board = tenant_dashboard(chosen)
            context["dashboard"] = board
            context["dashboard_chart"] = json.dumps(board.chart_data())
        return super().index(request, {**context, **(extra_context or {})})
