"""The tenant file from the admin: download it (secrets masked as `export_tenant` masks them) and upload one,
with a dry-run diff before anything is applied.

The rules are import_tenant's (integrations/tenant_file.py), plus two for the page: the file must name this
tenant's slug (import matches tenants by slug, so a different one would create or change another tenant), and
only a superuser may change a connection's `allowed_networks` (opening a private network is the operator's
decision, docs/security.md).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from integrations.models import CrmConnection, PbxConnection, Tenant
from integrations.tenant_file import (
    TenantFileError,
    dump_document,
    export_tenant,
    import_tenant,
    load_document,
)

MAX_FILE_BYTES = 1024 * 1024


class UploadForm(forms.Form):
    file = forms.FileField(label=_("Tenant file (JSON)"), required=False)
    # After the dry run the page carries the file's text, so "Apply" applies exactly what was previewed.
    document = forms.CharField(widget=forms.HiddenInput, required=False)

    def text(self) -> str:
        upload = self.cleaned_data.get("file")
        if upload is not None:
            if upload.size > MAX_FILE_BYTES:
                raise TenantFileError([("(file)", gettext("larger than 1 MiB"))])
            try:
                return upload.read().decode("utf-8")
            except UnicodeDecodeError:
                raise TenantFileError([("(file)", gettext("not UTF-8 text"))]) from None
        return self.cleaned_data.get("document") or ""


@dataclass
class Preview:
    text: str
    diff: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def download(tenant: Tenant) -> HttpResponse:
    response = HttpResponse(
        dump_document(export_tenant(tenant)), content_type="application/json; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{tenant.slug}.json"'
    return response


def page_rules(document: Any, tenant: Tenant, superuser: bool) -> list[tuple[str, str]]:
    """What this page refuses beyond import_tenant's own rules."""
    if not isinstance(document, dict):
        return []  # import_tenant names the problem
    problems = []
    if document.get("slug") != tenant.slug:
        problems.append(
            ("slug", gettext("must be %(slug)s: this page changes this tenant only") % {"slug": tenant.slug})
        )
    if superuser:
        return problems
    for side, model in (("pbx", PbxConnection), ("crm", CrmConnection)):
        stored = {c.key: sorted(c.allowed_networks or []) for c in model.objects.filter(tenant=tenant)}
        for n, entry in enumerate(document.get(side) or []):
            if not isinstance(entry, dict):
                continue
            wanted = entry.get("allowed_networks", [])
            wanted = sorted(str(w) for w in wanted) if isinstance(wanted, list) else wanted
            if wanted != stored.get(entry.get("key"), []):
                problems.append(
                    (
                        f"{side}[{n}].allowed_networks",
                        gettext(
                            "only the operator (a superuser) changes the networks a connection may reach"
                        ),
                    )
                )
    return problems


def preview(text: str, tenant: Tenant, superuser: bool) -> Preview:
    """Import the file in a transaction that is rolled back: the diff of the tenant file before and after."""
    result = Preview(text=text)
    try:
        document = load_document(text)
        result.problems = page_rules(document, tenant, superuser)
        if result.problems:
            return result
        before = dump_document(export_tenant(tenant))
        with transaction.atomic():
            imported = import_tenant(document)
            after = dump_document(export_tenant(imported.tenant))
            result.changes = imported.changes
            transaction.set_rollback(True)
    except TenantFileError as exc:
        result.problems = list(exc.problems)
        return result
    result.diff = list(
        difflib.unified_diff(
            before.splitlines(), after.splitlines(), gettext("stored"), gettext("after upload"), lineterm=""
        )
    )
    return result


def apply(text: str, tenant: Tenant, superuser: bool) -> Preview:
    result = Preview(text=text)
    try:
        document = load_document(text)
        result.problems = page_rules(document, tenant, superuser)
        if not result.problems:
            result.changes = import_tenant(document).changes
    except TenantFileError as exc:
        result.problems = list(exc.problems)
    return result


def upload_view(request: HttpRequest, tenant: Tenant) -> tuple[UploadForm, Preview | None]:
    """The form and, after a POST, the preview (dry run) or the applied result."""
    superuser = bool(request.user.is_superuser)
    if request.method != "POST":
        return UploadForm(), None
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return form, None
    try:
        text = form.text()
    except TenantFileError as exc:
        return form, Preview(text="", problems=list(exc.problems))
    if not text.strip():
        return form, Preview(text="", problems=[("(file)", gettext("choose a file"))])
    if request.POST.get("apply"):
        return form, apply(text, tenant, superuser)
    return form, preview(text, tenant, superuser)
