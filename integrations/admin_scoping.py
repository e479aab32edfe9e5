"""Tenant scoping for the Django admin, shared by every app's admin.

What a staff user sees and may do follows their TenantMemberships, not Django's model permissions: a
superuser sees everything; anyone else sees the tenants where they hold a membership, changes the objects of
tenants where they are `admin` and only reads where they are `support`. Model permissions are deliberately
ignored for non-superusers, so a tenant admin needs no per-model grant and a stray grant never widens what a
membership allows. An object of a tenant the user cannot see answers 404, so admin URLs do not reveal which
ids exist.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Model, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpRequest

from integrations.models import Tenant, TenantMembership

_ROLES_CACHE = "_callbridge_tenant_roles"


def is_superuser(request: HttpRequest) -> bool:
    user = request.user
    return bool(user.is_active and user.is_superuser)


def tenant_roles(request: HttpRequest) -> dict[int, str]:
    """The user's role per tenant id, read once per request."""
    cached = getattr(request, _ROLES_CACHE, None)
    if cached is None:
        user = request.user
        if user.is_authenticated and user.is_active and user.is_staff:
            cached = dict(TenantMembership.objects.filter(user=user).values_list("tenant_id", "role"))
        else:
            cached = {}
        setattr(request, _ROLES_CACHE, cached)
    return cached


def readable_tenant_ids(request: HttpRequest) -> set[int]:
    return set(tenant_roles(request))


def admin_tenant_ids(request: HttpRequest) -> set[int]:
    return {tenant_id for tenant_id, role in tenant_roles(request).items() if role == TenantMembership.ADMIN}


def may_operate(request: HttpRequest) -> bool:
    """Whether the user may run admin actions (retry, resend) on some tenant: superusers and tenant admins."""
    return is_superuser(request) or bool(admin_tenant_ids(request))


def owner_tenant_id(obj: Any) -> int | None:
    """The tenant id of a Tenant or of an object with a `tenant` foreign key; None for anything else."""
    if isinstance(obj, Tenant):
        return obj.pk
    return getattr(obj, "tenant_id", None)


def tenant_id_via(obj: Any, path: str) -> int | None:
    """Follow an ORM path ("tenant", "extension__tenant"; "" = obj is the Tenant) to a tenant id."""
    if not path:
        return obj.pk
    *hops, last = path.split("__")
    for hop in hops:
        obj = getattr(obj, hop, None)
        if obj is None:
            return None
    return getattr(obj, f"{last}_id", None)


def limit_to_tenants(queryset: QuerySet, tenant_ids: set[int]) -> QuerySet:
    """Restrict the choices of a foreign-key field to objects of the given tenants."""
    model = queryset.model
    if issubclass(model, Tenant):
        return queryset.filter(pk__in=tenant_ids)
    if issubclass(model, get_user_model()):
        # Never list every login of the installation: only the members of these tenants.
        return queryset.filter(tenant_memberships__tenant_id__in=tenant_ids).distinct()
    if any(f.name == "tenant" for f in model._meta.get_fields()):
        return queryset.filter(tenant_id__in=tenant_ids)
    return queryset


class TenantScopedAdminMixin:
    """For a ModelAdmin whose objects belong to one tenant each (`tenant_path` leads there).

    writable = False makes the pages read-only for everyone (a log, not configuration); only superusers may
    still delete, so that removing a tenant is not blocked by its call history.
    """

    tenant_path: str = "tenant"
    writable: bool = True

    def tenant_id_for(self, obj: Model) -> int | None:
        return tenant_id_via(obj, self.tenant_path)

    def scope_queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if is_superuser(request):
            return queryset
        lookup = f"{self.tenant_path}__in" if self.tenant_path else "pk__in"
        return queryset.filter(**{lookup: readable_tenant_ids(request)})

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return self.scope_queryset(request, super().get_queryset(request))  # type: ignore[misc]

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Model:
        # The admin would redirect to its index with "doesn't exist"; another tenant's id must look exactly
        # like an id that does not exist at all.
        obj = super().get_object(request, object_id, from_field)  # type: ignore[misc]
        if obj is None:
            raise Http404(f"No such {self.opts.verbose_name}.")  # type: ignore[attr-defined]
        return obj

    # ---- permissions from memberships ----
    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_superuser(request) or bool(tenant_roles(request))

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if is_superuser(request):
            return True
        readable = readable_tenant_ids(request)
        if obj is None:
            return bool(readable)
        return self.tenant_id_for(obj) in readable

    def may_write(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if not self.writable:
            return False
        if is_superuser(request):
            return True
        admin_ids = admin_tenant_ids(request)
        if obj is None:
            return bool(admin_ids)
        return self.tenant_id_for(obj) in admin_ids

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.may_write(request)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.may_write(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        # Superusers may delete even read-only records (a whole tenant goes with its calls and jobs).
        return is_superuser(request) or self.may_write(request, obj)

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """For admin actions with allowed_permissions=("operate",)."""
        return may_operate(request)

    def operable_queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        """The part of an action's selection the user may act on: tenants where they are admin."""
        if is_superuser(request):
            return queryset
        lookup = f"{self.tenant_path}__in" if self.tenant_path else "pk__in"
        return queryset.filter(**{lookup: admin_tenant_ids(request)})

    # ---- form choices ----
    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        formfield = super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]
        if formfield is not None and not is_superuser(request):
            formfield.queryset = limit_to_tenants(formfield.queryset, admin_tenant_ids(request))
        return formfield


class SameTenantInlineFormSet(BaseInlineFormSet):
    """Refuses a row that points at another tenant's object (a mapping to another tenant's CRM connection),
    which the choices already hide but a crafted POST or a new parent could still try."""

    def clean(self) -> None:
        super().clean()
        tenant_id = owner_tenant_id(self.instance)
        if tenant_id is None:
            return
        for form in self.forms:
            if not hasattr(form, "cleaned_data") or not form.has_changed() or self._should_delete_form(form):
                continue
            for name, value in form.cleaned_data.items():
                if (
                    not isinstance(value, Model)
                    or value is self.instance
                    or type(value) is type(form.instance)
                ):
                    continue
                other = owner_tenant_id(value)
                if other is not None and other != tenant_id:
                    form.add_error(name, "This belongs to another tenant.")


class TenantScopedInlineMixin:
    """For an inline whose parent is a Tenant or belongs to one; permissions follow the parent's tenant.

    writable = False shows the rows read-only to everyone; allow_add = False keeps rows from being added
    here (summaries that link to their own page).
    """

    writable: bool = True
    allow_add: bool = True
    formset = SameTenantInlineFormSet

    def parent_tenant_id(self, parent: Model | None) -> int | None:
        return owner_tenant_id(parent) if parent is not None else None

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if is_superuser(request):
            return True
        if obj is None:
            return bool(readable_tenant_ids(request))
        return self.parent_tenant_id(obj) in readable_tenant_ids(request)

    def may_write(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if not self.writable:
            return False
        if is_superuser(request):
            return True
        admin_ids = admin_tenant_ids(request)
        if obj is None or obj.pk is None:
            return bool(admin_ids)
        return self.parent_tenant_id(obj) in admin_ids

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.allow_add and self.may_write(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.may_write(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.may_write(request, obj)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        formfield = super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]
        if formfield is not None and not is_superuser(request):
            formfield.queryset = limit_to_tenants(formfield.queryset, admin_tenant_ids(request))
        return formfield

    def get_formset(self, request: HttpRequest, obj: Model | None = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)  # type: ignore[misc]
        tenant_id = self.parent_tenant_id(obj)
        if tenant_id is not None:
            # A fresh form class per call, so narrowing its fields' choices to the parent's tenant is safe.
            for field in formset.form.base_fields.values():
                if isinstance(field, forms.ModelChoiceField):
                    field.queryset = limit_to_tenants(field.queryset, {tenant_id})
        return formset


class ReadOnlyTenantInline(TenantScopedInlineMixin, admin.TabularInline):
    """A log shown on its parent's page: nobody adds, changes or deletes rows here."""

    writable = False
    allow_add = False
    can_delete = False
    extra = 0
