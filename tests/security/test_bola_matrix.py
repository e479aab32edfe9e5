"""The BOLA matrix (issue 15, RELIABILITY.md §6.7): every admin URL and every endpoint, visited as tenant A's
admin, tenant A's support user and tenant B's admin, with the other tenant's objects: 404 or 403, never the
object. The URLs come from the URL resolver and the admin registry, so a page or endpoint added later is
covered without editing this file, or fails it until it declares here how it is scoped (OBJECTS,
SUPERUSER_ONLY, URL_ARGUMENTS, ENDPOINTS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib import admin
from django.db import models
from django.forms.models import model_to_dict
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from api.models import ApiKey
from calls.models import (
    Call,
    CallEvent,
    OriginateRequest,
    OutboundJob,
    PlaybackLog,
    Recording,
    RoutingDecision,
)
from integrations.models import (
    CrmConnection,
    Extension,
    ExternalPhone,
    PbxConnection,
    Tenant,
    TenantMembership,
)
from tests.admin_world import World, client_for

pytestmark = pytest.mark.django_db


def _call(world: World, side: str) -> Call:
    pbx = getattr(world, f"pbx_{side}")
    call = Call.objects.create(
        tenant=pbx.tenant, pbx_connection=pbx, provider_call_id=f"call-{side}", started_at=timezone.now()
    )
    Recording.objects.create(call=call, state=Recording.STORED)
    return call


def _job(world: World, side: str) -> OutboundJob:
    crm = getattr(world, f"crm_{side}")
    return OutboundJob.objects.create(
        tenant=crm.tenant,
        crm_connection=crm,
        connection_ref=f"crm:{crm.pk}",
        kind="planfix.event",
        call=_call_of(world, side),
        dedupe_key=f"job-{side}",
        status=OutboundJob.DEAD,
    )


def _call_of(world: World, side: str) -> Call:
    return Call.objects.filter(provider_call_id=f"call-{side}").first() or _call(world, side)


def _membership(world: World, side: str) -> TenantMembership:
    return TenantMembership.objects.get(user=getattr(world, f"admin_{side}"))


# How each tenant-scoped model admin gets one object of tenant "a" or "b". A model registered in the admin
# that is neither here nor in SUPERUSER_ONLY fails test_every_admin_model_declares_its_scoping.
OBJECTS: dict[type[models.Model], Callable[[World, str], models.Model]] = {
    Tenant: lambda w, s: getattr(w, f"tenant_{s}"),
    TenantMembership: _membership,
    PbxConnection: lambda w, s: getattr(w, f"pbx_{s}"),
    CrmConnection: lambda w, s: getattr(w, f"crm_{s}"),
    Extension: lambda w, s: getattr(w, f"extension_{s}"),
    ExternalPhone: lambda w, s: getattr(w, f"phone_{s}"),
    Call: _call_of,
    OutboundJob: _job,
    CallEvent: lambda w, s: CallEvent.objects.create(
        call=_call_of(w, s),
        pbx_connection=getattr(w, f"pbx_{s}"),
        provider_call_id=f"call-{s}",
        dedupe_key=f"event-{s}",
        order_key="1",
        kind="ringing",
        occurred_at=timezone.now(),
    ),
    RoutingDecision: lambda w, s: RoutingDecision.objects.create(
        tenant=getattr(w, f"tenant_{s}"), caller="+79161234567", source="none"
    ),
    OriginateRequest: lambda w, s: OriginateRequest.objects.create(
        tenant=getattr(w, f"tenant_{s}"), extension="101", phone="+79161234567"
    ),
    PlaybackLog: lambda w, s: PlaybackLog.objects.create(recording=_call_of(w, s).recording, status=200),
    ApiKey: lambda w, s: ApiKey.issue(getattr(w, f"tenant_{s}"), "reporting")[0],
}
# Installation-wide models: only superusers see them at all.
SUPERUSER_ONLY = {"auth.user", "auth.group", "axes.accessattempt", "axes.accesslog", "axes.accessfailurelog"}
# Extra URL arguments of custom admin pages, by URL name suffix.
URL_ARGUMENTS: dict[str, dict[str, str]] = {
    "_reveal_secret": {"name": "pbx_token"},
    "_regenerate_secret": {"name": "pbx_token"},
    "_operation": {"kind": "check_connection"},
}
# Every non-admin URL pattern, by name (or route) and how it is scoped; checked in test_endpoints_*.
ENDPOINTS = {
    "healthz": "public probe, no tenant data",
    "set_language": "Django's language switch: sets the visitor's own language cookie, no tenant data",
    "readyz": "public probe, no tenant data",
    "hook": "the connection's own credentials (tests/webhook_security.py; below: A's at B's URL)",
    "^hooks/(?P<provider>[a-z0-9_]+)/(?P<public_id>[A-Za-z0-9_-]+)/$": "as `hook`",
    "record": "the link is the credential: an HMAC over the recording id (tests/recordings/test_link_tokens.py)",
    "invitation": "a one-time token (tests/security/test_memberships.py)",
    "metrics": "installation-wide figures, bearer METRICS_TOKEN (tests/metrics/)",
    "call-list": "a tenant API key reads its own tenant only (tests/api/test_keys.py, test_calls.py)",
    "call-detail": "as `call-list`: another tenant's call id is 404 (tests/api/test_calls.py)",
    "api-schema": "the public schema, no tenant data",
    "api-docs": "Swagger UI for the schema, no tenant data",
    "sandbox_pbx_directory": "the sandbox PBX connection's own signing key (X-Sandbox-Key), tests/sandbox/",
    "sandbox_pbx_call": "as `sandbox_pbx_directory`",
    "sandbox_pbx_recording": "as `sandbox_pbx_directory`",
    "sandbox_pbx_click_to_call": "as `sandbox_pbx_directory`",
}


def label(model: type[models.Model]) -> str:
    return f"{model._meta.app_label}.{model._meta.model_name}"


@pytest.fixture
def objects(world):
    return {model: {side: make(world, side) for side in ("a", "b")} for model, make in OBJECTS.items()}


def admin_pages(model_admin: Any) -> list[tuple[str, list[str]]]:
    """(URL name, its argument names) for every page of one model admin."""
    return [(p.name, list(p.pattern.converters)) for p in model_admin.get_urls() if p.name]


def url_for(name: str, arguments: list[str], obj: models.Model | None) -> str:
    kwargs: dict[str, Any] = {}
    for argument in arguments:
        if argument == "object_id":
            kwargs["object_id"] = obj.pk
        else:
            extra = next((v for suffix, v in URL_ARGUMENTS.items() if name.endswith(suffix)), None)
            assert extra and argument in extra, f"admin URL {name}: declare its {argument!r} in URL_ARGUMENTS"
            kwargs[argument] = extra[argument]
    return reverse(f"admin:{name}", kwargs=kwargs)


def snapshot(objects: dict) -> dict:
    """Every row of the matrix's objects, to prove a refused action changed nothing."""
    rows = {}
    for model in OBJECTS:
        rows[label(model)] = sorted(
            (tuple(sorted((k, str(v)) for k, v in model_to_dict(o).items())) for o in model.objects.all()),
            key=str,
        )
    return rows


def test_every_admin_model_declares_its_scoping():
    undeclared = [
        label(model)
        for model in admin.site._registry
        if model not in OBJECTS and label(model) not in SUPERUSER_ONLY
    ]
    assert not undeclared, (
        f"declare how these admin models are scoped (OBJECTS or SUPERUSER_ONLY): {undeclared}"
    )


@pytest.mark.parametrize(
    ("user_attr", "foreign_side"), [("admin_a", "b"), ("support_a", "b"), ("admin_b", "a")], ids=str
)
def test_no_admin_page_shows_another_tenants_object(world, objects, user_attr, foreign_side):
    client = client_for(getattr(world, user_attr))
    own_side = "a" if foreign_side == "b" else "b"
    checked = 0
    for model, model_admin in admin.site._registry.items():
        if model not in OBJECTS:
            continue
        foreign, own = objects[model][foreign_side], objects[model][own_side]
        for name, arguments in admin_pages(model_admin):
            if "object_id" not in arguments:
                continue
            for method in ("get", "post"):
                response = getattr(client, method)(url_for(name, arguments, foreign))
                assert response.status_code in (403, 404), (user_attr, method, name, response.status_code)
                checked += 1
        # Not vacuous: the same user reaches their own object's page.
        own_page = client.get(
            url_for(f"{model._meta.app_label}_{model._meta.model_name}_change", ["object_id"], own)
        )
        assert own_page.status_code == 200, (user_attr, label(model), own_page.status_code)
        # The list shows only their tenants' objects.
        listing = client.get(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"))
        if listing.status_code == 200:
            shown = {o.pk for o in listing.context["cl"].result_list}
            assert foreign.pk not in shown and own.pk in shown, (user_attr, label(model))
    assert checked > 50


@pytest.mark.parametrize("user_attr", ["admin_a", "support_a", "admin_b"])
def test_no_admin_action_touches_another_tenants_object(world, objects, user_attr):
    client = client_for(getattr(world, user_attr))
    foreign_side = "a" if user_attr.endswith("_b") else "b"
    before = snapshot(objects)
    for model in admin.site._registry:
        if model not in OBJECTS:
            continue
        request = client.get(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"))
        if request.status_code != 200 or request.context["action_form"] is None:
            continue
        actions = [
            choice[0] for choice in request.context["action_form"].fields["action"].choices if choice[0]
        ]
        for action in actions:
            response = client.post(
                reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"),
                {"action": action, "_selected_action": [objects[model][foreign_side].pk], "post": "yes"},
            )
            assert response.status_code in (200, 302, 403, 404), (user_attr, label(model), action)
    assert snapshot(objects) == before


@pytest.mark.parametrize("user_attr", ["admin_a", "support_a", "admin_b"])
def test_superuser_only_models_are_closed_to_tenant_staff(world, user_attr):
    client = client_for(getattr(world, user_attr))
    for model in admin.site._registry:
        if label(model) in SUPERUSER_ONLY:
            url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
            assert client.get(url).status_code == 403, label(model)


@pytest.mark.parametrize("user_attr", ["admin_a", "support_a"])
def test_autocomplete_never_lists_another_tenants_objects(world, objects, user_attr):
    """Django answers /admin/autocomplete/ for any foreign key of a registered model whose target has
    search_fields: every such pair is asked, and the answers hold no object of tenant B."""
    client = client_for(getattr(world, user_attr))
    asked = 0
    for model in admin.site._registry:
        for field in model._meta.get_fields():
            if not (field.is_relation and field.concrete and (field.many_to_one or field.many_to_many)):
                continue
            target = field.related_model
            response = client.get(
                "/admin/autocomplete/",
                {
                    "app_label": model._meta.app_label,
                    "model_name": model._meta.model_name,
                    "field_name": field.name,
                },
            )
            assert response.status_code in (200, 403, 404), (label(model), field.name, response.status_code)
            if response.status_code != 200:
                continue
            asked += 1
            ids = {str(item["id"]) for item in response.json()["results"]}
            if target in objects:
                assert str(objects[target]["b"].pk) not in ids, (user_attr, label(model), field.name)
            if target._meta.label_lower == "auth.user":
                assert str(world.admin_b.pk) not in ids and str(world.outsider.pk) not in ids
    assert asked > 0


def _walk(patterns: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            if (
                getattr(pattern, "app_name", None) == "admin"
                or getattr(pattern, "namespace", None) == "admin"
            ):
                continue
            found += _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            found.append((pattern.name or str(pattern.pattern), pattern))
    return found


def test_every_endpoint_declares_how_it_is_scoped():
    undeclared = [name for name, _ in _walk(get_resolver().url_patterns) if name not in ENDPOINTS]
    assert not undeclared, f"declare how these endpoints are scoped (ENDPOINTS): {undeclared}"


@pytest.mark.parametrize("provider", ["rostelecom", "mango", "planfix", "retailcrm", "wirecrm"])
def test_one_tenants_credentials_never_open_another_tenants_hook(client, world, provider):
    """A valid request of tenant A's connection, sent to tenant B's URL of the same provider: refused, no rows."""
    from tests.factories import CrmConnectionFactory, PbxConnectionFactory
    from tests.security.test_fuzz_inbound import AUTHENTICATE, SECRETS, SETTINGS, rows

    factory = PbxConnectionFactory if provider in ("rostelecom", "mango") else CrmConnectionFactory
    own_secrets = SECRETS[provider]
    other_secrets = {k: (v + "-b" if not v.startswith("http") else v) for k, v in own_secrets.items()}
    factory(
        tenant=world.tenant_a,
        provider=provider,
        key=f"{provider}-x",
        settings=SETTINGS.get(provider, {}),
        secrets=own_secrets,
        active=False,
    )
    target = factory(
        tenant=world.tenant_b,
        provider=provider,
        key=f"{provider}-y",
        settings=SETTINGS.get(provider, {}),
        secrets=other_secrets,
        active=provider not in ("rostelecom", "mango"),
    )
    if provider in ("rostelecom", "mango"):
        PbxConnection.objects.filter(tenant=world.tenant_b).update(active=False)
        PbxConnection.objects.filter(pk=target.pk).update(active=True)
    signed = AUTHENTICATE[provider](b'{"session_id": "x", "entry_id": "y"}', own_secrets)
    path = {
        "rostelecom": "call_events",
        "mango": "events/call",
        "planfix": "",
        "retailcrm": "make-call",
        "wirecrm": "make-call",
    }[provider]
    before = rows()

    headers = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in signed.get("headers", {}).items()}
    url = f"/hooks/{provider}/{target.public_id}/{path}"
    if signed.get("params"):
        from urllib.parse import urlencode

        url += "?" + urlencode(signed["params"])
    response = client.post(
        url, signed["body"], content_type=signed.get("content_type", "application/json"), **headers
    )

    assert 400 <= response.status_code < 500, response.content
    assert rows() == before
