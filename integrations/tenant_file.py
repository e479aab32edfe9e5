"""Tenant configuration as one JSON document: export, validate, import.

The document is the whole truth of a tenant: importing it creates, updates and removes connections,
extensions, external phones, mappings and site codes until the database says exactly what the file says.
Import validates the entire document before writing anything and runs in one transaction, so a rejected
file leaves the database as it was. Every problem is reported with the path of the field that caused it
(`crm[0].settings.colour`, `external_phones[1].number`).

`docs/configuration.md` describes the format for people; this module is its only implementation.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import models, transaction
from django.db.models import RestrictedError

from api.models import MIN_KEY_LENGTH, ApiKey
from integrations import http
from integrations.crm_sync import request_crm_sync
from integrations.models import (
    Connection,
    CrmConnection,
    Extension,
    ExtensionMapping,
    ExternalPhone,
    ExternalPhoneSiteCode,
    PbxConnection,
    Tenant,
    TenantMembership,
    extension_validator,
    slug_validator,
    validate_region,
    validate_time_zone,
)
from integrations.phones import InvalidPhone, to_e164, to_e164_or_none
from integrations.providers.base import (
    CRM,
    GENERATE,
    MASK,
    PBX,
    SIDES,
    SchemaError,
    provider_class,
    secrets_equal,
)

TENANT_KEYS = (
    "slug",
    "name",
    "active",
    "region",
    "time_zone",
    "retention_days",
    "call_retention_days",
    "click_to_call_regions",
    "pbx",
    "crm",
    "extensions",
    "external_phones",
    "api_keys",
)
# The lists are required (an empty list is fine) because a missing one would silently remove everything of
# that kind: the file is the whole truth, so leaving a list out must be a deliberate `[]`.
REQUIRED_TENANT_KEYS = ("slug", "name", "pbx", "crm", "extensions", "external_phones")
CONNECTION_KEYS = (
    "key",
    "provider",
    "active",
    "settings",
    "secrets",
    "public_id",
    "inbound_urls",
    "allowed_networks",
)
CRM_CONNECTION_KEYS = (*CONNECTION_KEYS, "priority")
EXTENSION_KEYS = ("number", "name", "email", "kind", "sip_login", "crm_users")
EXTERNAL_PHONE_KEYS = ("number", "label", "site_codes")
API_KEY_KEYS = ("name", "key")

DEFAULT_CRM_PRIORITY = 10
# A public_id is the only secret part of an inbound URL: refuse ones short enough to guess (≥ 128 bits).
PUBLIC_ID_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
PUBLIC_ID_MIN_LENGTH = 22
PUBLIC_ID_MAX_LENGTH = 64


class TenantFileError(Exception):
    """A tenant file that cannot be imported. `problems` lists (field path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{path}: {message}" for path, message in problems))


# ---------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------


def export_tenant(tenant: Tenant, *, include_secrets: bool = False) -> dict[str, Any]:
    """The tenant as a document that `import_tenant` accepts. Secrets are "***" unless include_secrets."""
    crm_connections = list(CrmConnection.objects.filter(tenant=tenant).order_by("key"))
    crm_keys = {crm.pk: crm.key for crm in crm_connections}
    extensions = Extension.objects.filter(tenant=tenant).order_by("number").prefetch_related("mappings")
    phones = ExternalPhone.objects.filter(tenant=tenant).order_by("number").prefetch_related("site_codes")
    return {
        "slug": tenant.slug,
        "name": tenant.name,
        "active": tenant.active,
        "region": tenant.region,
        "time_zone": tenant.time_zone,
        "retention_days": tenant.retention_days,
        "call_retention_days": tenant.call_retention_days,
        "click_to_call_regions": list(tenant.click_to_call_regions or []),
        "pbx": [
            _export_connection(pbx, include_secrets)
            for pbx in PbxConnection.objects.filter(tenant=tenant).order_by("key")
        ],
        "crm": [_export_connection(crm, include_secrets) for crm in crm_connections],
        "extensions": [_export_extension(extension, crm_keys) for extension in extensions],
        "external_phones": [
            {
                "number": phone.number,
                "label": phone.label,
                "site_codes": {
                    crm_keys[s.crm_connection_id]: s.code
                    for s in phone.site_codes.all()
                    if s.crm_connection_id in crm_keys
                },
            }
            for phone in phones
        ],
        # Keys are stored hashed: even --include-secrets cannot write one out.
        "api_keys": [
            {"name": name, "key": MASK}
            for name in ApiKey.objects.active()
            .filter(tenant=tenant)
            .order_by("name")
            .values_list("name", flat=True)
        ],
    }


def _export_extension(extension: Extension, crm_keys: dict[int, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"number": extension.number, "name": extension.name, "email": extension.email}
    # Written only when they say something, so documents of tenants without groups or logins stay as they were.
    if extension.kind != Extension.USER:
        entry["kind"] = extension.kind
    if extension.sip_login:
        entry["sip_login"] = extension.sip_login
    entry["crm_users"] = {
        crm_keys[m.crm_connection_id]: m.crm_user_id
        for m in extension.mappings.all()
        if m.crm_connection_id in crm_keys
    }
    return entry


def _export_connection(connection: Connection, include_secrets: bool) -> dict[str, Any]:
    settings = dict(connection.settings or {})
    # Defaults filled in, so a connection typed in by hand exports the same way after a round trip. Settings
    # the schema refuses are exported as stored: importing them names what is wrong.
    with contextlib.suppress(SchemaError, LookupError):
        settings = provider_class(connection.provider).clean_settings(settings)
    stored = {name: value for name, value in (connection.secrets or {}).items() if value}
    document: dict[str, Any] = {
        "key": connection.key,
        "provider": connection.provider,
        "active": connection.active,
        "public_id": connection.public_id,
        "inbound_urls": connection.inbound_urls(),
        "settings": settings,
        "secrets": stored if include_secrets else dict.fromkeys(stored, MASK),
    }
    if isinstance(connection, CrmConnection):
        document["priority"] = connection.priority
    document["allowed_networks"] = list(connection.allowed_networks or [])
    return document


def dump_document(document: dict[str, Any]) -> str:
    """Stable text: sorted keys and fixed indentation, so equal tenants give byte-identical files."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load_document(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TenantFileError([("(file)", f"not valid JSON: {exc}")]) from None


# ---------------------------------------------------------------------------------------------------------
# Validation: the whole document becomes a plan before anything is written
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ConnectionPlan:
    path: str
    key: str
    provider: str
    active: bool
    settings: dict[str, Any]
    secrets: dict[str, Any]
    public_id: str | None
    priority: int = DEFAULT_CRM_PRIORITY
    allowed_networks: list[str] = field(default_factory=list)


@dataclass
class ExtensionPlan:
    number: str
    name: str
    email: str
    crm_users: dict[str, str]
    kind: str = "user"
    sip_login: str = ""


@dataclass
class ExternalPhonePlan:
    number: str
    label: str
    site_codes: dict[str, str]


@dataclass
class ApiKeyPlan:
    """`key`: a value to store; None with `generate`: a fresh key unless one of this name exists; None
    without: keep the stored key of this name ("***")."""

    name: str
    key: str | None = None
    generate: bool = False


@dataclass
class TenantPlan:
    slug: str
    name: str
    active: bool
    region: str
    time_zone: str
    retention_days: int | None
    call_retention_days: int | None
    click_to_call_regions: list[str]
    pbx: list[ConnectionPlan]
    crm: list[ConnectionPlan]
    extensions: list[ExtensionPlan]
    external_phones: list[ExternalPhonePlan]
    generated: list[str] = field(default_factory=list)
    # None: the file has no "api_keys", and the tenant's keys stay as they are.
    api_keys: list[ApiKeyPlan] | None = None


class _Reader:
    """Collects every problem of a document, so one run reports them all."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def object(self, value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> bool:
        if not isinstance(value, dict):
            self.problem(path or "(file)", "must be an object")
            return False
        ok = True
        for key in sorted(set(value) - set(allowed), key=str):
            self.problem(_join(path, key), f"unknown key; known: {', '.join(allowed)}")
            ok = False
        for key in required:
            if key not in value:
                self.problem(_join(path, key), "is required")
                ok = False
        return ok

    def list(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            self.problem(path, "must be a list")
            return []
        return value

    def string(self, value: Any, path: str, *, max_length: int, blank: bool = True) -> str | None:
        if not isinstance(value, str):
            self.problem(path, "must be a string")
            return None
        value = value.strip()
        if not value and not blank:
            self.problem(path, "must not be empty")
            return None
        if len(value) > max_length:
            self.problem(path, f"must be at most {max_length} characters")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.problem(path, "must be true or false")
            return None
        return value

    def whole_number(self, value: Any, path: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.problem(path, "must be a whole number, 0 or more")
            return None
        return value

    def validated(self, value: str | None, path: str, validator: Any) -> str | None:
        if value is None:
            return None
        try:
            validator(value)
        except ValidationError as exc:
            self.problem(path, " ".join(exc.messages))
            return None
        return value

    def references(self, value: Any, path: str, crm_keys: set[str]) -> dict[str, str]:
        """`crm_users` / `site_codes`: {CRM connection key: text}."""
        if not isinstance(value, dict):
            self.problem(path, "must be an object {CRM connection key: value}")
            return {}
        result: dict[str, str] = {}
        for crm_key, text in value.items():
            entry_path = f"{path}.{crm_key}"
            if crm_key not in crm_keys:
                known = ", ".join(sorted(crm_keys)) or "none"
                self.problem(
                    entry_path, f"no CRM connection with key {crm_key!r} in this file; known: {known}"
                )
                continue
            if isinstance(text, int) and not isinstance(text, bool):
                text = str(text)  # CRM user ids are often numeric; they are stored as text
            cleaned = self.string(text, entry_path, max_length=100, blank=False)
            if cleaned is not None:
                result[crm_key] = cleaned
        return result


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def plan_import(document: Any, tenant: Tenant | None) -> TenantPlan:
    """Validate a document against the current state of `tenant` (None: a new one). Raises TenantFileError."""
    reader = _Reader()
    if not reader.object(document, "", TENANT_KEYS, REQUIRED_TENANT_KEYS):
        raise TenantFileError(reader.problems)

    slug = reader.validated(reader.string(document["slug"], "slug", max_length=50), "slug", slug_validator)
    name = reader.string(document["name"], "name", max_length=200, blank=False)
    active = reader.boolean(document.get("active", True), "active")
    region = reader.validated(
        reader.string(document.get("region", "RU"), "region", max_length=2), "region", validate_region
    )
    time_zone = reader.validated(
        reader.string(document.get("time_zone", "Europe/Moscow"), "time_zone", max_length=64),
        "time_zone",
        validate_time_zone,
    )
    retention_days = document.get("retention_days")
    if retention_days is not None:
        retention_days = reader.whole_number(retention_days, "retention_days")
    call_retention_days = document.get("call_retention_days")
    if call_retention_days is not None:
        call_retention_days = reader.whole_number(call_retention_days, "call_retention_days")
    click_to_call_regions = _plan_regions(reader, document.get("click_to_call_regions", []))

    generated: list[str] = []
    pbx = _plan_connections(reader, document["pbx"], PBX, tenant, generated)
    crm = _plan_connections(reader, document["crm"], CRM, tenant, generated)
    active_pbx = [plan for plan in pbx if plan.active]
    for extra in active_pbx[1:]:
        reader.problem(
            f"{extra.path}.active", f"only one PBX connection can be active ({active_pbx[0].path} is)"
        )

    # Keys of every CRM entry that named one, valid or not, so a broken connection does not also make every
    # mapping that refers to it fail.
    crm_keys = _keys_named(document["crm"])
    extensions = _plan_extensions(reader, document["extensions"], crm_keys)
    phones = _plan_external_phones(reader, document["external_phones"], crm_keys, region)
    api_keys = _plan_api_keys(reader, document["api_keys"], tenant) if "api_keys" in document else None

    if reader.problems:
        raise TenantFileError(reader.problems)
    return TenantPlan(
        slug=slug or "",
        name=name or "",
        active=bool(active),
        region=(region or "RU").upper(),
        time_zone=time_zone or "Europe/Moscow",
        retention_days=retention_days,
        call_retention_days=call_retention_days,
        click_to_call_regions=click_to_call_regions,
        pbx=pbx,
        crm=crm,
        extensions=extensions,
        external_phones=phones,
        generated=generated,
        api_keys=api_keys,
    )


def _plan_regions(reader: _Reader, value: Any) -> list[str]:
    """`click_to_call_regions`: ISO 3166 codes; [] means the tenant's own region."""
    codes = []
    for position, code in enumerate(reader.list(value, "click_to_call_regions")):
        path = f"click_to_call_regions[{position}]"
        code = reader.validated(reader.string(code, path, max_length=2, blank=False), path, validate_region)
        if code is not None and code.upper() not in codes:
            codes.append(code.upper())
    return codes


def _keys_named(entries: Any) -> set[str]:
    if not isinstance(entries, list):
        return set()
    return {e["key"] for e in entries if isinstance(e, dict) and isinstance(e.get("key"), str)}


def _connection_model(side: str) -> type[PbxConnection] | type[CrmConnection]:
    return PbxConnection if side == PBX else CrmConnection


def _plan_connections(
    reader: _Reader, entries: Any, side: str, tenant: Tenant | None, generated: list[str]
) -> list[ConnectionPlan]:
    model = _connection_model(side)
    existing = {c.key: c for c in model.objects.filter(tenant=tenant)} if tenant else {}
    file_keys = _keys_named(entries)
    # Connections this import removes give their public ids up before any other connection is saved.
    removed = [c.pk for key, c in existing.items() if key not in file_keys]
    plans: list[ConnectionPlan] = []
    seen_keys: dict[str, str] = {}
    given_public_ids: dict[str, str] = {}
    for index, entry in enumerate(reader.list(entries, side)):
        path = f"{side}[{index}]"
        allowed = CRM_CONNECTION_KEYS if side == CRM else CONNECTION_KEYS
        if not reader.object(entry, path, allowed, ("key", "provider")):
            continue
        before = len(reader.problems)

        key = reader.validated(
            reader.string(entry["key"], f"{path}.key", max_length=50), f"{path}.key", slug_validator
        )
        if key is not None:
            if key in seen_keys:
                reader.problem(f"{path}.key", f"{key!r} is already used by {seen_keys[key]}")
            seen_keys.setdefault(key, path)
        current = existing.get(key) if key else None

        provider = entry["provider"]
        known_here = isinstance(provider, str) and SIDES.get(provider) == side
        provider_cls = provider_class(provider) if known_here else None
        if provider_cls is None:
            known = ", ".join(sorted(k for k, s in SIDES.items() if s == side))
            reader.problem(
                f"{path}.provider", f"unknown {side.upper()} provider {provider!r}; known: {known}"
            )

        active = reader.boolean(entry.get("active", True), f"{path}.active")
        priority = DEFAULT_CRM_PRIORITY
        if side == CRM:
            priority = reader.whole_number(entry.get("priority", DEFAULT_CRM_PRIORITY), f"{path}.priority")

        public_id = entry.get("public_id")
        if public_id is not None:
            public_id = _check_public_id(reader, public_id, f"{path}.public_id", model, current, removed)
            if public_id is not None:
                if public_id in given_public_ids:
                    reader.problem(f"{path}.public_id", f"is already used by {given_public_ids[public_id]}")
                given_public_ids.setdefault(public_id, path)

        settings: dict[str, Any] = {}
        secrets: dict[str, Any] = {}
        if provider_cls is not None:
            raw_settings = entry.get("settings", {})
            if not isinstance(raw_settings, dict):
                reader.problem(f"{path}.settings", "must be an object")
            else:
                try:
                    settings = provider_cls.clean_settings(raw_settings)
                except SchemaError as exc:
                    reader.problem(f"{path}.{exc.field}", _schema_message(exc))
            # Secrets stored for another provider mean nothing to this one.
            stored = dict(current.secrets or {}) if current and current.provider == provider else {}
            secrets = _plan_secrets(reader, entry.get("secrets", {}), path, provider_cls, stored, generated)
        networks = _plan_networks(reader, entry.get("allowed_networks", []), f"{path}.allowed_networks")
        _check_credential_urls(reader, path, settings, secrets, networks)

        if len(reader.problems) == before and key is not None and active is not None and priority is not None:
            plans.append(
                ConnectionPlan(
                    path=path,
                    key=key,
                    provider=provider,
                    active=active,
                    settings=settings,
                    secrets=secrets,
                    public_id=public_id,
                    priority=priority,
                    allowed_networks=networks,
                )
            )
    return plans


def _plan_networks(reader: _Reader, value: Any, path: str) -> list[str]:
    """`allowed_networks`: CIDRs this connection alone may reach. Only this import (the operator's tool) and
    superusers in the admin set them; see docs/security.md."""
    networks = []
    for position, item in enumerate(reader.list(value, path)):
        item_path = f"{path}[{position}]"
        text = reader.string(item, item_path, max_length=64, blank=False)
        if text is None:
            continue
        try:
            network = str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            reader.problem(item_path, f"not a network: {text!r}")
            continue
        if network not in networks:
            networks.append(network)
    return networks


def _check_credential_urls(
    reader: _Reader, path: str, settings: dict[str, Any], secrets: dict[str, Any], networks: list[str]
) -> None:
    """URLs that carry credentials must be https unless they point into an allowed private network."""
    with http.connection_networks(networks):
        for part, values in (("settings", settings), ("secrets", secrets)):
            for name, value in values.items():
                if isinstance(value, str) and value.lower().startswith("http://"):
                    problem = http.credential_url_problem(value)
                    if problem:
                        reader.problem(f"{path}.{part}.{name}", problem)


def _check_public_id(
    reader: _Reader,
    value: Any,
    path: str,
    model: type[PbxConnection] | type[CrmConnection],
    current: Connection | None,
    removed: list[int],
) -> str | None:
    public_id = reader.string(value, path, max_length=PUBLIC_ID_MAX_LENGTH, blank=False)
    if public_id is None:
        return None
    if len(public_id) < PUBLIC_ID_MIN_LENGTH or not set(public_id) <= PUBLIC_ID_ALPHABET:
        reader.problem(
            path,
            f"must be at least {PUBLIC_ID_MIN_LENGTH} characters of letters, digits, '-' and '_' "
            "(leave it out and one is made)",
        )
        return None
    holders = model.objects.filter(public_id=public_id).exclude(pk__in=removed)
    if current is not None:
        holders = holders.exclude(pk=current.pk)
    if holders.exists():
        reader.problem(path, "is already used by another connection")
        return None
    return public_id


def _plan_secrets(
    reader: _Reader,
    given: Any,
    path: str,
    provider_cls: Any,
    stored: dict[str, Any],
    generated: list[str],
) -> dict[str, Any]:
    if not isinstance(given, dict):
        reader.problem(f"{path}.secrets", "must be an object")
        return {}
    declared = {f.name for f in provider_cls.secret_fields}
    issued = set(provider_cls.issued_secrets())
    resolved: dict[str, Any] = {}
    ok = True
    for name, value in given.items():
        secret_path = f"{path}.secrets.{name}"
        # Undeclared names pass through untouched, so the provider's schema reports them as unknown keys.
        if name in declared and value == MASK:
            if stored.get(name):
                resolved[name] = stored[name]
            else:
                reader.problem(
                    secret_path, '"***" keeps the stored value, but none is stored: give the value'
                )
                ok = False
        elif name in declared and value == GENERATE:
            if name not in issued:
                reader.problem(
                    secret_path,
                    '"generate" only works for tokens the portal issues '
                    f"({', '.join(sorted(issued)) or 'none for this provider'})",
                )
                ok = False
            elif stored.get(name):
                resolved[name] = stored[name]
            else:
                resolved[name] = provider_cls.new_secret(name)
                generated.append(secret_path)
        else:
            resolved[name] = value
    try:
        cleaned = provider_cls.clean_secrets(resolved)
    except SchemaError as exc:
        reader.problem(f"{path}.{exc.field}", _schema_message(exc))
        return {}
    return cleaned if ok else {}


def _schema_message(exc: SchemaError) -> str:
    return str(exc).split(": ", 1)[-1]


def _validate_optional_email(value: str) -> None:
    if value:
        validate_email(value)


def _plan_extensions(reader: _Reader, entries: Any, crm_keys: set[str]) -> list[ExtensionPlan]:
    plans: list[ExtensionPlan] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(reader.list(entries, "extensions")):
        path = f"extensions[{index}]"
        if not reader.object(entry, path, EXTENSION_KEYS, ("number",)):
            continue
        before = len(reader.problems)
        number = entry["number"]
        if not isinstance(number, str):
            # Written as a JSON number, "011" would lose its leading zero.
            reader.problem(f"{path}.number", 'must be a string of 2 to 6 digits, e.g. "101"')
            number = None
        number = reader.validated(number, f"{path}.number", extension_validator)
        if number is not None:
            if number in seen:
                reader.problem(f"{path}.number", f"{number!r} is already listed at {seen[number]}")
            seen.setdefault(number, path)
        name = reader.string(entry.get("name", ""), f"{path}.name", max_length=200)
        email = reader.validated(
            reader.string(entry.get("email", ""), f"{path}.email", max_length=254),
            f"{path}.email",
            _validate_optional_email,
        )
        crm_users = reader.references(entry.get("crm_users", {}), f"{path}.crm_users", crm_keys)
        kind = entry.get("kind", Extension.USER)
        if kind not in {Extension.USER, Extension.GROUP}:
            reader.problem(f"{path}.kind", f'must be "user" or "group", got {kind!r}')
        elif kind == Extension.GROUP and crm_users:
            reader.problem(
                f"{path}.crm_users", "a group is not an employee: it cannot be mapped to CRM users"
            )
        sip_login = reader.string(entry.get("sip_login", ""), f"{path}.sip_login", max_length=100)
        if len(reader.problems) == before:
            plans.append(
                ExtensionPlan(
                    number=number or "",
                    name=name or "",
                    email=email or "",
                    crm_users=crm_users,
                    kind=kind,
                    sip_login=sip_login or "",
                )
            )
    return plans


def _plan_external_phones(
    reader: _Reader, entries: Any, crm_keys: set[str], region: str | None
) -> list[ExternalPhonePlan]:
    plans: list[ExternalPhonePlan] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(reader.list(entries, "external_phones")):
        path = f"external_phones[{index}]"
        if not reader.object(entry, path, EXTERNAL_PHONE_KEYS, ("number",)):
            continue
        before = len(reader.problems)
        number = None
        raw = reader.string(entry["number"], f"{path}.number", max_length=40, blank=False)
        if raw is not None and region is not None:  # a bad region is reported once, at "region"
            try:
                number = to_e164(raw, region)
            except InvalidPhone as exc:
                reader.problem(f"{path}.number", f"{exc} (region {region.upper()})")
        if number is not None:
            if number in seen:
                reader.problem(f"{path}.number", f"{number} is already listed at {seen[number]}")
            seen.setdefault(number, path)
        label = reader.string(entry.get("label", ""), f"{path}.label", max_length=200)
        site_codes = reader.references(entry.get("site_codes", {}), f"{path}.site_codes", crm_keys)
        if len(reader.problems) == before and number is not None:
            plans.append(ExternalPhonePlan(number=number, label=label or "", site_codes=site_codes))
    return plans


def _plan_api_keys(reader: _Reader, entries: Any, tenant: Tenant | None) -> list[ApiKeyPlan]:
    stored = (
        set(ApiKey.objects.active().filter(tenant=tenant).values_list("name", flat=True)) if tenant else set()
    )
    plans: list[ApiKeyPlan] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(reader.list(entries, "api_keys")):
        path = f"api_keys[{index}]"
        if not reader.object(entry, path, API_KEY_KEYS, API_KEY_KEYS):
            continue
        name = reader.string(entry["name"], f"{path}.name", max_length=100, blank=False)
        if name is not None:
            if name in seen:
                reader.problem(f"{path}.name", f"{name!r} is already listed at {seen[name]}")
                continue
            seen[name] = path
        key = entry["key"]
        key_path = f"{path}.key"
        if not isinstance(key, str):
            reader.problem(
                key_path,
                f'must be a string: a key of at least {MIN_KEY_LENGTH} characters, "generate" or "***"',
            )
        elif key == MASK:
            if name is not None and name not in stored:
                reader.problem(
                    key_path,
                    f'"***" keeps the stored key named {name!r}, but there is none: give a key or "generate"',
                )
            elif name is not None:
                plans.append(ApiKeyPlan(name))
        elif key == GENERATE:
            if name is not None:
                plans.append(ApiKeyPlan(name, generate=True))
        elif len(key) < MIN_KEY_LENGTH or key != key.strip() or any(ch.isspace() for ch in key):
            reader.problem(
                key_path, f'must be at least {MIN_KEY_LENGTH} characters without spaces (or "generate")'
            )
        elif name is not None:
            plans.append(ApiKeyPlan(name, key=key))
    return plans


# ---------------------------------------------------------------------------------------------------------
# Import: apply a plan
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    tenant: Tenant
    created: bool
    changes: list[str]
    generated: list[str]
    dry_run: bool = False
    # API keys this import generated, {name: key}: printed once by import_tenant, never stored in plaintext.
    generated_api_keys: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.created or bool(self.changes)


def import_tenant(document: Any, *, dry_run: bool = False, create_only: bool = False) -> ImportResult:
    """Upsert a tenant from a document in one transaction; nothing is written when anything is wrong.
    create_only: an existing tenant with the document's slug is an error, and is left untouched."""
    with transaction.atomic():
        slug = document.get("slug") if isinstance(document, dict) else None
        tenant = (
            Tenant.objects.select_for_update().filter(slug=slug).first() if isinstance(slug, str) else None
        )
        if tenant is not None and create_only:
            raise TenantFileError(
                [("slug", f"tenant {slug!r} exists already (administered by {administrators(tenant)})")]
            )
        plan = plan_import(document, tenant)
        result = _apply(plan, tenant)
        result.dry_run = dry_run
        if dry_run:
            transaction.set_rollback(True)
    return result


def administrators(tenant: Tenant) -> str:
    """Who administers a tenant, for the operator about to change it: their e-mail addresses (or usernames)."""
    admins = TenantMembership.objects.filter(tenant=tenant, role=TenantMembership.ADMIN).select_related(
        "user"
    )
    names = sorted(m.user.email or m.user.get_username() for m in admins)
    return ", ".join(names) or "nobody"


def _apply(plan: TenantPlan, tenant: Tenant | None) -> ImportResult:
    changes: list[str] = []
    created = tenant is None
    tenant = tenant or Tenant(slug=plan.slug)
    wanted = {
        "name": plan.name,
        "active": plan.active,
        "region": plan.region,
        "time_zone": plan.time_zone,
        "retention_days": plan.retention_days,
        "call_retention_days": plan.call_retention_days,
        "click_to_call_regions": plan.click_to_call_regions,
    }
    differing = _assign(tenant, wanted)
    if created:
        tenant.save()
    elif differing:
        tenant.save(update_fields=differing)
        changes.append(f"tenant: changed {', '.join(differing)}")

    _apply_connections(tenant, PbxConnection, plan.pbx, PBX, changes)
    crm_by_key = _apply_connections(tenant, CrmConnection, plan.crm, CRM, changes)
    _apply_extensions(tenant, plan.extensions, crm_by_key, changes)
    _apply_external_phones(tenant, plan.external_phones, crm_by_key, changes)
    generated_keys = _apply_api_keys(tenant, plan.api_keys, changes) if plan.api_keys is not None else {}
    if created or changes:
        # Whatever changed may be in a CRM's copy (RetailCRM's module); the sync job is debounced and rolls
        # back with a dry run.
        request_crm_sync(tenant.pk)
    return ImportResult(
        tenant=tenant,
        created=created,
        changes=changes,
        generated=plan.generated,
        generated_api_keys=generated_keys,
    )


def _assign(instance: models.Model, values: dict[str, Any]) -> list[str]:
    """Set the values that differ; return their field names (saving only those keeps rows untouched)."""
    differing = [name for name, value in values.items() if getattr(instance, name) != value]
    for name in differing:
        setattr(instance, name, values[name])
    return differing


def _same_secrets(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    if set(stored) != set(wanted):
        return False
    return all(secrets_equal(str(stored[name]), str(wanted[name])) for name in wanted)


def _apply_connections(
    tenant: Tenant,
    model: type[PbxConnection] | type[CrmConnection],
    plans: list[ConnectionPlan],
    side: str,
    changes: list[str],
) -> dict[str, Connection]:
    existing = {c.key: c for c in model.objects.filter(tenant=tenant)}
    wanted_keys = {plan.key for plan in plans}
    for key, connection in sorted(existing.items()):
        if key not in wanted_keys:
            try:
                with transaction.atomic():
                    connection.delete()
            except RestrictedError:
                # Its calls keep referring to it: the history is worth more than a tidy file.
                raise TenantFileError(
                    [
                        (
                            side,
                            f'connection {key!r} has call history and cannot be removed; set "active": false',
                        )
                    ]
                ) from None
            changes.append(f"{side} {key!r}: removed")
    by_key: dict[str, Connection] = {}
    # Inactive ones first: moving "active" from one PBX to another never holds two active PBXs at once.
    for plan in sorted(plans, key=lambda p: (p.active, p.key)):
        connection = existing.get(plan.key)
        is_new = connection is None
        if connection is None:
            connection = model(tenant=tenant, key=plan.key)
        values: dict[str, Any] = {
            "provider": plan.provider,
            "active": plan.active,
            "settings": plan.settings,
            "allowed_networks": plan.allowed_networks,
        }
        if side == CRM:
            values["priority"] = plan.priority
        if plan.public_id is not None:
            values["public_id"] = plan.public_id
        differing = _assign(connection, values)
        if is_new or not _same_secrets(dict(connection.secrets or {}), plan.secrets):
            connection.secrets = plan.secrets
            differing.append("secrets")
        if is_new:
            connection.save()
            changes.append(f"{side} {plan.key!r}: created")
        elif differing:
            connection.save()
            changes.append(f"{side} {plan.key!r}: changed {', '.join(differing)}")
        by_key[plan.key] = connection
    return by_key


def _apply_extensions(
    tenant: Tenant, plans: list[ExtensionPlan], crm_by_key: dict[str, Connection], changes: list[str]
) -> None:
    existing = {e.number: e for e in Extension.objects.filter(tenant=tenant)}
    wanted = {plan.number for plan in plans}
    for number, extension in sorted(existing.items()):
        if number not in wanted:
            extension.delete()
            changes.append(f"extension {number}: removed")
    for plan in plans:
        extension = existing.get(plan.number)
        if extension is None:
            extension = Extension.objects.create(
                tenant=tenant,
                number=plan.number,
                name=plan.name,
                email=plan.email,
                kind=plan.kind,
                sip_login=plan.sip_login,
            )
            changes.append(f"extension {plan.number}: created")
        else:
            differing = _assign(
                extension,
                {"name": plan.name, "email": plan.email, "kind": plan.kind, "sip_login": plan.sip_login},
            )
            if differing:
                extension.save(update_fields=differing)
                changes.append(f"extension {plan.number}: changed {', '.join(differing)}")
        mappings = {m.crm_connection_id: m for m in ExtensionMapping.objects.filter(extension=extension)}
        wanted_mappings = {crm_by_key[key].pk: (key, user_id) for key, user_id in plan.crm_users.items()}
        for crm_id, mapping in mappings.items():
            if crm_id not in wanted_mappings:
                mapping.delete()
                changes.append(f"extension {plan.number}: mapping removed")
        for crm_id, (key, user_id) in sorted(wanted_mappings.items(), key=lambda item: item[1]):
            mapping = mappings.get(crm_id)
            if mapping is None:
                ExtensionMapping.objects.create(
                    extension=extension, crm_connection_id=crm_id, crm_user_id=user_id
                )
                changes.append(f"extension {plan.number}: mapped to {key} user {user_id}")
            elif mapping.crm_user_id != user_id:
                # Another CRM user: the status reported for the previous one does not apply.
                mapping.crm_user_id, mapping.status, mapping.status_at = user_id, "", None
                mapping.save(update_fields=["crm_user_id", "status", "status_at"])
                changes.append(f"extension {plan.number}: mapped to {key} user {user_id}")


def _apply_external_phones(
    tenant: Tenant, plans: list[ExternalPhonePlan], crm_by_key: dict[str, Connection], changes: list[str]
) -> None:
    # Numbers typed in elsewhere may be stored in another written form: match them by their E.164 form.
    existing = {
        to_e164_or_none(p.number, tenant.region) or p.number: p
        for p in ExternalPhone.objects.filter(tenant=tenant)
    }
    wanted = {plan.number for plan in plans}
    for number, phone in sorted(existing.items()):
        if number not in wanted:
            phone.delete()
            changes.append(f"external phone {phone.number}: removed")
    for plan in plans:
        phone = existing.get(plan.number)
        if phone is None:
            phone = ExternalPhone.objects.create(tenant=tenant, number=plan.number, label=plan.label)
            changes.append(f"external phone {plan.number}: created")
        else:
            differing = _assign(phone, {"number": plan.number, "label": plan.label})
            if differing:
                phone.save(update_fields=differing)
                changes.append(f"external phone {plan.number}: changed {', '.join(differing)}")
        codes = {c.crm_connection_id: c for c in ExternalPhoneSiteCode.objects.filter(external_phone=phone)}
        wanted_codes = {crm_by_key[key].pk: (key, code) for key, code in plan.site_codes.items()}
        for crm_id, site_code in codes.items():
            if crm_id not in wanted_codes:
                site_code.delete()
                changes.append(f"external phone {plan.number}: site code removed")
        for crm_id, (key, code) in sorted(wanted_codes.items(), key=lambda item: item[1]):
            site_code = codes.get(crm_id)
            if site_code is None:
                ExternalPhoneSiteCode.objects.create(
                    external_phone=phone, crm_connection_id=crm_id, code=code
                )
                changes.append(f"external phone {plan.number}: site code {code!r} for {key}")
            elif site_code.code != code:
                site_code.code = code
                site_code.save(update_fields=["code"])
                changes.append(f"external phone {plan.number}: site code {code!r} for {key}")


def _apply_api_keys(tenant: Tenant, plans: list[ApiKeyPlan], changes: list[str]) -> dict[str, str]:
    """Keys not in the file are revoked (kept for the audit trail); a new value replaces the key of its name."""
    existing = {k.name: k for k in ApiKey.objects.active().filter(tenant=tenant)}
    wanted = {plan.name for plan in plans}
    for name, key in sorted(existing.items()):
        if name not in wanted:
            key.revoke()
            changes.append(f"api key {name!r}: revoked")
    generated: dict[str, str] = {}
    for plan in plans:
        current = existing.get(plan.name)
        if plan.key is None and (current is not None or not plan.generate):
            continue  # "***", or "generate" where a key of that name exists: kept as it is
        if plan.key is not None and current is not None:
            if current.matches(plan.key):
                continue
            current.revoke()
        _row, value = ApiKey.issue(tenant, plan.name, plan.key)
        if plan.key is None:
            generated[plan.name] = value
        changes.append(f"api key {plan.name!r}: {'replaced' if current else 'created'}")
    return generated
