"""The list's filters (django-filter): time range, phone in any form, extension, result, direction."""

from __future__ import annotations

import datetime as dt
from typing import Any

import django_filters
from django import forms
from django.db.models import QuerySet
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import extend_schema_field

from calls.events import RESULTS
from calls.models import Call
from calls.search import extension_condition, phone_condition
from integrations.phones import is_extension


class MomentField(forms.CharField):
    """An ISO 8601 date or date-time; without an offset it means the tenant's local time (applied later)."""

    def to_python(self, value: Any) -> dt.datetime | dt.date | None:
        value = super().to_python(value).strip()
        if not value:
            return None
        try:
            moment = parse_datetime(value.replace(" ", "+", 1) if value.count(" ") == 1 else value)
            if moment is None:
                moment = parse_date(value)
        except ValueError:
            moment = None
        if moment is None:
            raise forms.ValidationError(
                "Expected ISO 8601: 2026-11-24, 2026-11-24T09:00:00 or 2026-11-24T09:00:00+03:00."
            )
        return moment


@extend_schema_field(
    {"type": "string", "example": "2026-11-24T09:00:00+03:00", "description": "ISO 8601 date or date-time"}
)
class MomentFilter(django_filters.Filter):
    field_class = MomentField

    def filter(self, qs: QuerySet, value: dt.datetime | dt.date | None) -> QuerySet:
        if value is None:
            return qs
        tz = self.parent.request.user.tenant.tz
        if isinstance(value, dt.datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=tz)
        else:
            moment = dt.datetime.combine(value, dt.time(), tz)  # a date: the start of that local day
        return qs.filter(**{f"started_at__{self.lookup_expr}": moment})


class ExtensionField(forms.CharField):
    def to_python(self, value: Any) -> str:
        value = super().to_python(value).strip()
        if value and not is_extension(value):
            raise forms.ValidationError("An extension is 2 to 6 digits.")
        return value


@extend_schema_field({"type": "string", "pattern": r"^\d{2,6}$"})
class ExtensionFilter(django_filters.Filter):
    field_class = ExtensionField


class CallFilter(django_filters.FilterSet):
    started_after = MomentFilter(
        lookup_expr="gte",
        label="Calls that started at or after this moment (ISO 8601; a date is local midnight).",
    )
    started_before = MomentFilter(
        lookup_expr="lt", label="Calls that started before this moment (ISO 8601; a date is local midnight)."
    )
    phone = django_filters.CharFilter(
        method="filter_phone", label="The client's or the external number, in any written form."
    )
    extension = ExtensionFilter(method="filter_extension", label="Any extension that rang or answered.")
    result = django_filters.MultipleChoiceFilter(
        choices=[(r, r) for r in RESULTS], label="Repeat to match any of several results."
    )
    direction = django_filters.MultipleChoiceFilter(
        choices=[(d, d) for d in ("in", "out", "internal")], label="Repeat to match several directions."
    )

    class Meta:
        model = Call
        fields = ["started_after", "started_before", "phone", "extension", "result", "direction"]

    def filter_phone(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(phone_condition(value, [self.request.user.tenant.region]))

    def filter_extension(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(extension_condition(value)) if value else queryset
