"""The OpenAPI document is valid, and requests generated from it get documented answers.

A generated-request test driven by the schema (what Schemathesis does, without its dependency tree): for every
operation, parameters are drawn from each parameter's own schema (enum values, integers, patterns) mixed with
hostile values (garbage, huge numbers, NUL, unbalanced quotes, SQL), with a valid key, a wrong key and none.
Every answer must be a status the schema documents for that operation (never a 5xx), and every documented body
must validate against its response schema. CI runs this file as its own stage with a 5-minute budget.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
from typing import Any
from urllib.parse import urlencode

import jsonschema
import pytest
from django.urls import Resolver404, resolve
from drf_spectacular.validation import validate_schema

from api.models import ApiKey
from tests.crm_world import CallScript, play

pytestmark = pytest.mark.django_db

EXAMPLES_PER_OPERATION = 150
HOSTILE = [
    "",
    " ",
    "0",
    "-1",
    "99999999999999999999999",
    "1e309",
    "null",
    "true",
    "'; DROP TABLE calls_call; --",
    '"',
    "\x00",
    "%00",
    "../../etc/passwd",
    "ё" * 300,
    "2026-13-45",
    "2026-11-24T25:61:00",
    "2026-11-24T10:00:00+99:00",
    "+" * 50,
    "1" * 5000,
    "[]",
    "{}",
]
LOOSE_STATUSES = {"400", "401", "404", "429"}  # statuses documented for every operation or path shape


def to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 "nullable" is not JSON Schema: turn it into a type list (or a null alternative)."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: to_json_schema(v) for k, v in node.items() if k not in {"example", "readOnly", "writeOnly"}}
    if node.pop("nullable", False):
        if "type" in node:
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    if node.get("enum") == [None]:  # drf-spectacular's NullEnum
        node["type"] = "null"
    return node


@pytest.fixture
def schema(client) -> dict[str, Any]:
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    document = response.json()
    validate_schema(copy.deepcopy(document))  # OpenAPI 3.0 meta-schema
    return document


def resolver_for(schema: dict[str, Any]) -> dict[str, Any]:
    components = {name: to_json_schema(s) for name, s in schema["components"]["schemas"].items()}
    return {"components": {"schemas": components}}


def value_for(parameter: dict[str, Any], rng: random.Random, ids: list[int]) -> Any:
    spec = parameter.get("schema", {})
    if rng.random() < 0.3:
        return rng.choice(HOSTILE)
    if parameter["in"] == "path":
        return rng.choice([*ids, 0, 10**12])
    kind = spec.get("type")
    if kind == "array":
        choices = spec["items"].get("enum") or ["x"]
        return rng.sample(choices, rng.randint(1, min(3, len(choices))))
    if "enum" in spec:
        return rng.choice(spec["enum"])
    if kind == "integer":
        return rng.choice([1, 2, 3, 50, 500, 501, -5])
    if spec.get("pattern") == r"^\d{2,6}$":
        return rng.choice(["101", "102", "105", "99", "1234567"])
    if "example" in spec:
        moment = dt.datetime(2026, 11, 24, 7, 0, tzinfo=dt.UTC) + dt.timedelta(hours=rng.randint(-30, 30))
        return rng.choice(
            [moment.isoformat(), moment.date().isoformat(), moment.replace(tzinfo=None).isoformat()]
        )
    return rng.choice(["+79101234567", "8 (910) 123-45-67", "1234567", "abc"])


def generated_requests(schema: dict[str, Any], ids: list[int], seed: int):
    rng = random.Random(seed)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            parameters = operation.get("parameters", [])
            for _ in range(EXAMPLES_PER_OPERATION):
                concrete, query = path, []
                for parameter in parameters:
                    if parameter["in"] == "path":
                        concrete = concrete.replace(
                            "{" + parameter["name"] + "}", str(value_for(parameter, rng, ids))
                        )
                    elif rng.random() < 0.5:
                        value = value_for(parameter, rng, ids)
                        values = value if isinstance(value, list) else [value]
                        query += [(parameter["name"], v) for v in values]
                yield method, concrete, query, operation


def test_the_schema_is_valid_openapi_and_documents_the_api(schema):
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {"/api/v1/calls/", "/api/v1/calls/{id}/"}
    listed = {p["name"] for p in schema["paths"]["/api/v1/calls/"]["get"]["parameters"]}
    assert {
        "started_after",
        "started_before",
        "phone",
        "extension",
        "result",
        "direction",
        "ordering",
    } <= listed
    assert {"cursor", "page_size"} <= listed
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def test_generated_requests_get_documented_answers(client, schema, pbx, other_pbx, tenant, other_tenant):
    start = dt.datetime(2026, 11, 24, 7, 0, tzinfo=dt.UTC)
    mine = []
    for n in range(4):
        script = CallScript(f"s{n}", start=start + dt.timedelta(hours=n * 5))
        mine.append(
            play(
                pbx,
                script.event(0, "ringing", "101"),
                script.event(3, "answered", "102"),
                script.event(9, "completed"),
            )
        )
    theirs = play(other_pbx, CallScript("t0").event(0, "ringing", "101"))
    key = ApiKey.issue(tenant, "schema")[1]
    resolver = resolver_for(schema)
    seen_statuses: set[str] = set()
    count = 0
    for method, path, query, operation in generated_requests(schema, [c.pk for c in mine] + [theirs.pk], 19):
        credential = random.Random(count).choice([key, key, key, key, "wrong-key-" + "x" * 30, None])
        headers = {"HTTP_AUTHORIZATION": f"Bearer {credential}"} if credential else {}
        response = getattr(client, method)(f"{path}?{urlencode(query)}" if query else path, **headers)
        status = str(response.status_code)
        count += 1
        assert response.status_code < 500, (path, query, response.content[:500])
        documented = operation["responses"]
        assert status in documented or status in LOOSE_STATUSES, (path, query, status, response.content[:300])
        try:
            resolve(path)
            routed = True
        except Resolver404:
            routed = False  # a generated id like "../x" or "" leaves the API's routes: Django's own 404
        if status == "404" and credential != key:
            assert not routed, "an id must never answer 404 before authentication"
        if routed and status in documented and "content" in documented[status]:
            body_schema = to_json_schema(documented[status]["content"]["application/json"]["schema"])
            jsonschema.validate(
                response.json(),
                {**body_schema, **resolver},
                format_checker=jsonschema.FormatChecker(),
            )
        seen_statuses.add(status)
    assert count == EXAMPLES_PER_OPERATION * 2
    assert {"200", "400", "401", "404"} <= seen_statuses
