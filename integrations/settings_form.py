"""Form fields generated from a provider's settings schema (integrations.providers.base.Field).

A business admin sets an API URL in a URL box, picks a choice from a select, ticks a checkbox, and fills a map
(Planfix analytics, the sandbox PBX's users) as key/value rows. Each value is validated by the provider's own
schema and its message is shown next to its field. The connection form keeps the JSON editor behind an
"advanced" toggle (integrations.admin.ConnectionForm).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from integrations.providers.base import Field, SchemaError

SETTING_PREFIX = "setting__"
MAP_ROWS_SPARE = 3

# Labels of the settings keys the providers declare (the key itself stays visible in the help text, since
# the tenant file and the provider documentation use it).
LABELS: dict[str, Any] = {
    "api_url": _("API address"),
    "account_url": _("Account address"),
    "domain": _("Domain"),
    "routing_budget_ms": _("Routing time budget, ms"),
    "time_zone": _("PBX time zone"),
    "record_ip": _("Address allowed to fetch recordings"),
    "call_back_from": _("Click-to-call names the employee by"),
    "crm_routing": _("Ask the CRMs whose caller it is"),
    "reconcile_hours": _("Reconcile silent calls for, hours"),
    "timestamp_offset": _("Timestamp offset"),
    "recording_grace_seconds": _("Wait for the recording, seconds"),
    "analytics": _("Analytics fields"),
    "module_code": _("Module code"),
    "upload_strategy": _("Upload calls"),
    "upload_interval_minutes": _("Upload interval, minutes"),
    "send_events": _("Send call events"),
    "allow_crm_edits": _("Allow edits in the CRM"),
    "start_timeout_ms": _("Call start answer timeout, ms"),
    "popup_ttl_seconds": _("Pop-up lifetime, seconds"),
    "events": _("Events to send"),
    "users": _("Employees"),
    "recording_format": _("Recording format"),
}
CHOICE_LABELS: dict[str, Any] = {
    "immediate": _("right after each call"),
    "periodic": _("in periodic batches"),
    "pin": _("extension (pin)"),
    "sipuri": _("SIP address"),
    "auto": _("automatic"),
}


class MapWidget(forms.Widget):
    """Key/value rows: `<name>__key_<n>` and `<name>__value_<n>`, the stored rows plus a few empty ones."""

    template_name = "admin/callbridge/map_widget.html"

    def __init__(
        self, key_label: str = "", value_label: str = "", attrs: dict[str, Any] | None = None
    ) -> None:
        super().__init__(attrs)
        self.key_label = key_label
        self.value_label = value_label

    def format_value(self, value: Any) -> list[tuple[str, str]]:
        rows = list(value.items()) if isinstance(value, dict) else list(value or [])
        return rows + [("", "")] * MAP_ROWS_SPARE

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        context["widget"]["rows"] = [
            {"key_name": f"{name}__key_{n}", "value_name": f"{name}__value_{n}", "key": k, "value": v}
            for n, (k, v) in enumerate(self.format_value(value))
        ]
        context["widget"]["key_label"] = self.key_label or _("key")
        context["widget"]["value_label"] = self.value_label or _("value")
        return context

    def value_from_datadict(self, data: Any, files: Any, name: str) -> list[tuple[str, str]]:
        rows = []
        n = 0
        while f"{name}__key_{n}" in data or f"{name}__value_{n}" in data:
            rows.append((data.get(f"{name}__key_{n}", ""), data.get(f"{name}__value_{n}", "")))
            n += 1
        return rows

    def value_omitted_from_data(self, data: Any, files: Any, name: str) -> bool:
        return f"{name}__key_0" not in data


class MapField(forms.Field):
    widget = MapWidget

    def to_python(self, value: Any) -> dict[str, str]:
        if isinstance(value, dict):
            return value
        result: dict[str, str] = {}
        for key, text in value or []:
            key, text = (key or "").strip(), (text or "").strip()
            if not key and not text:
                continue
            if not key:
                raise ValidationError(_("A row has a value but no key."))
            if key in result:
                raise ValidationError(_("The key %(key)s appears twice."), params={"key": key})
            result[key] = text
        return result


def form_field(field: Field) -> forms.Field:
    """The Django form field for one schema field; the schema still validates the value (`clean_value`)."""
    label = LABELS.get(field.name, field.name.replace("_", " ").capitalize())
    help_text = f"{field.name}" + (f": {field.help}" if field.help else "")
    common: dict[str, Any] = {"label": label, "help_text": help_text, "required": field.required}
    kind = field.kind
    if kind == "url":
        return forms.URLField(assume_scheme="https", widget=forms.URLInput(attrs={"size": 60}), **common)
    if kind == "int":
        return forms.IntegerField(min_value=field.minimum, max_value=field.maximum, **common)
    if kind == "bool":
        return forms.BooleanField(**{**common, "required": False})
    if kind == "choice":
        choices = [(c, CHOICE_LABELS.get(c, c)) for c in field.choices]
        return forms.ChoiceField(choices=choices, **common)
    if kind == "choices":
        return forms.MultipleChoiceField(
            choices=[(c, c) for c in field.choices], widget=forms.CheckboxSelectMultiple, **common
        )
    if kind == "map":
        return MapField(**common)
    return forms.CharField(widget=forms.TextInput(attrs={"size": 40}), **{**common, "strip": True})


def settings_fields(fields: tuple[Field, ...]) -> dict[str, forms.Field]:
    return {SETTING_PREFIX + f.name: form_field(f) for f in fields}


def initial_values(fields: tuple[Field, ...], stored: dict[str, Any]) -> dict[str, Any]:
    """What each generated field shows: the stored value, else the schema's default."""
    values = {}
    for f in fields:
        value = stored.get(f.name, f.default)
        values[SETTING_PREFIX + f.name] = value if value is not None else ("" if f.kind != "bool" else False)
    return values


def collect(fields: tuple[Field, ...], cleaned: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings dict from the generated fields' cleaned values, and per form field the schema's message
    for a value it refuses."""
    data: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in fields:
        name = SETTING_PREFIX + f.name
        if name not in cleaned:
            continue  # the form field itself refused the value and carries its message
        value = cleaned[name]
        if value in (None, "") and f.kind not in {"bool"}:
            continue
        try:
            data[f.name] = f.clean(value)
        except SchemaError as exc:
            errors[name] = str(exc).split(": ", 1)[-1]
    return data, errors
