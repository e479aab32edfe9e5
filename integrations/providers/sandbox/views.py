"""Pages of the sandbox: the simulated PBX's API under /sandbox/pbx/<public_id>/, and in the connections' admin
the sandbox PBX's page (calls played, "Send test call") and the sandbox CRM's inbox.

The PBX API answers what the sandbox PBX adapter asks in-process (farend), for people and tools that want to see
the simulated PBX from outside. Requests carry the connection's signing_key in `X-Sandbox-Key`. Everything is a
404 unless SANDBOX_ENABLED.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.forms import modelformset_factory
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from integrations.models import CrmConnection, PbxConnection
from integrations.providers.base import ProviderError, secrets_equal
from integrations.providers.sandbox import enabled, farend
from integrations.providers.sandbox.models import SandboxCall, SandboxContact, SandboxMessage
from integrations.simulation import DESCRIPTIONS, SCENARIOS

INBOX_LIMIT = 200


def _pbx(request: HttpRequest, public_id: str) -> PbxConnection:
    if not enabled():
        raise Http404(_("sandbox disabled"))
    connection = (
        PbxConnection.objects.select_related("tenant")
        .filter(provider="sandbox_pbx", public_id=public_id, active=True, tenant__active=True)
        .first()
    )
    if connection is None:
        raise Http404(_("no such sandbox PBX"))
    key = str((connection.secrets or {}).get("signing_key") or "")
    if not secrets_equal(request.headers.get("X-Sandbox-Key"), key):
        raise _Forbidden()
    return connection


class _Forbidden(Exception):
    pass


def _api(view: Any) -> Any:
    def wrapped(request: HttpRequest, public_id: str, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, _pbx(request, public_id), **kwargs)
        except _Forbidden:
            return JsonResponse({"ok": False, "error": "Invalid key"}, status=403)
        except ProviderError as exc:
            return JsonResponse({"ok": False, "error": str(exc)}, status=exc.status or 400)

    wrapped.__name__ = view.__name__
    return csrf_exempt(wrapped)


@_api
@require_http_methods(["GET"])
def directory(request: HttpRequest, connection: PbxConnection) -> HttpResponse:
    return JsonResponse({"ok": True, "users": farend.directory(connection)})


@_api
@require_http_methods(["GET"])
def call_details(request: HttpRequest, connection: PbxConnection, call_id: str) -> HttpResponse:
    details = farend.call_details(connection, call_id)
    if details is None:
        return JsonResponse({"ok": False, "error": "Unknown call"}, status=404)
    return JsonResponse({"ok": True, "call": details})


@_api
@require_http_methods(["GET", "HEAD"])
def recording(request: HttpRequest, connection: PbxConnection, call_id: str) -> HttpResponse:
    content, content_type = farend.recording(connection, call_id)
    response = HttpResponse(content, content_type=content_type)
    response["Content-Length"] = str(len(content))
    return response


@_api
@require_http_methods(["POST"])
def click_to_call(request: HttpRequest, connection: PbxConnection) -> HttpResponse:
    """`{"extension": "101", "phone": "+7…"}`: the PBX calls the extension, then the phone."""
    from calls import services

    try:
        body = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return JsonResponse({"ok": False, "error": "Invalid JSON"}, status=400)
    if not isinstance(body, dict):
        return JsonResponse({"ok": False, "error": "Invalid JSON"}, status=400)
    outcome = services.originate(
        connection.tenant, str(body.get("extension") or ""), str(body.get("phone") or "")
    )
    if not outcome.ok:
        return JsonResponse({"ok": False, "error": outcome.error, "code": outcome.code}, status=422)
    return JsonResponse({"ok": True, "call_id": outcome.correlation_id})


# ---------------------------------------------------------------------------------------------------------
# The sandbox CRM's inbox (admin)
# ---------------------------------------------------------------------------------------------------------


class ClickToCallForm(forms.Form):
    extension = forms.CharField(max_length=6)
    phone = forms.CharField(max_length=30)


def _contact_formset(connection: CrmConnection) -> Any:
    class ContactForm(forms.ModelForm):
        class Meta:
            model = SandboxContact
            fields = ["phone", "name", "extension"]

        def _post_clean(self) -> None:
            self.instance.crm_connection = connection  # its clean() reads the tenant's region
            super()._post_clean()

    return modelformset_factory(SandboxContact, form=ContactForm, extra=2, can_delete=True)


def inbox_page(request: HttpRequest, connection: CrmConnection, model_admin: Any) -> HttpResponse:
    """Messages as the CRM shows them (newest first), its routing table, and a click-to-call form."""
    from calls import services

    if not model_admin.has_view_permission(request, connection):
        raise Http404
    writable = model_admin.has_change_permission(request, connection)
    Formset = _contact_formset(connection)
    contacts = SandboxContact.objects.filter(crm_connection=connection)
    formset = Formset(queryset=contacts, prefix="contacts")
    call_form = ClickToCallForm(prefix="call")
    if request.method == "POST":
        if not writable:
            raise Http404
        if not enabled():
            messages.error(
                request, _("Sandbox providers are disabled on this portal (SANDBOX_ENABLED=false).")
            )
        elif "save_contacts" in request.POST:
            formset = Formset(request.POST, queryset=contacts, prefix="contacts")
            if formset.is_valid():
                for form in formset.forms:
                    form.instance.crm_connection = connection
                formset.save()
                messages.success(request, _("Routing table saved."))
                return redirect(request.path)
        elif "click_to_call" in request.POST:
            call_form = ClickToCallForm(request.POST, prefix="call")
            if call_form.is_valid():
                extension, phone = call_form.cleaned_data["extension"], call_form.cleaned_data["phone"]
                outcome = services.originate(connection.tenant, extension, phone, crm_connection=connection)
                text = f"Click-to-call {extension} → {phone}: " + (
                    f"placed (PBX call {outcome.correlation_id})"
                    if outcome.ok
                    else f"refused: {outcome.error}"
                )
                SandboxMessage.objects.create(
                    crm_connection=connection,
                    kind=SandboxMessage.CLICK_TO_CALL,
                    pbx_call_id=outcome.correlation_id,
                    extension=extension,
                    text=text[:500],
                    data={"ok": outcome.ok, "code": outcome.code},
                )
                (messages.success if outcome.ok else messages.error)(request, text)
                return redirect(request.path)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "original": connection,
        "title": _("Sandbox inbox: %(connection)s") % {"connection": connection},
        "inbox": SandboxMessage.objects.filter(crm_connection=connection)[:INBOX_LIMIT],
        "formset": formset,
        "call_form": call_form,
        "writable": writable,
        "sandbox_enabled": enabled(),
    }
    return TemplateResponse(request, "sandbox/inbox.html", context)


class TestCallForm(forms.Form):
    scenario = forms.ChoiceField(choices=[(s, f"{s}: {DESCRIPTIONS[s]}") for s in SCENARIOS])


def pbx_page(request: HttpRequest, connection: PbxConnection, model_admin: Any) -> HttpResponse:
    """The sandbox PBX's own page: the calls it played (from its memory) and "Send test call"."""
    from integrations.simulation import ScenarioError, default_options

    if not model_admin.has_view_permission(request, connection):
        raise Http404
    writable = model_admin.has_change_permission(request, connection)
    form = TestCallForm(prefix="test")
    if request.method == "POST":
        if not writable:
            raise Http404
        form = TestCallForm(request.POST, prefix="test")
        if form.is_valid():
            try:
                report = connection.adapter.send_test_call(
                    form.cleaned_data["scenario"], default_options(connection.tenant)
                )
            except (ScenarioError, ProviderError) as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, report)
            return redirect(request.path)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "original": connection,
        "title": _("Sandbox PBX: %(connection)s") % {"connection": connection},
        "played": SandboxCall.objects.filter(pbx_connection=connection)[:INBOX_LIMIT],
        "form": form,
        "writable": writable,
        "sandbox_enabled": enabled(),
    }
    return TemplateResponse(request, "sandbox/pbx.html", context)
