"""Property-based fuzzing of every inbound URL (issue 15 item 10).

Random bodies, content types, headers and sizes go to every path each registered provider declares (and a few
it does not), and to /records/<token>, both with valid credentials (signed or carrying the right token as that
provider authenticates) and without. Whatever arrives: never a 5xx, and a request that fails authentication
writes no row. The example count is bounded (FUZZ_EXAMPLES, default 30 per URL and mode) so the whole file
stays well inside a five-minute CI budget; raise it locally for a longer hunt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calls.models import (
    Call,
    CallEvent,
    JobAttempt,
    OriginateRequest,
    OutboundJob,
    PlaybackLog,
    RoutingDecision,
)
from integrations.models import ExtensionMapping
from integrations.providers.base import REGISTRY, SIDES, provider_class
from tests.factories import CrmConnectionFactory, ExtensionFactory, PbxConnectionFactory, TenantFactory

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis directory in the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SECRETS: dict[str, dict[str, str]] = {
    "rostelecom": {
        "client_id": "000003C405E6525C64C184258C44EC99",
        "sign_key": "00000716ABDA6D4DFF10F82BCBBFC532",
    },
    "mango": {"api_key": "k7x2m9q4w8e1r5t3y6u0i2o4p8a1s3dz", "api_salt": "s8d7f6g5h4j3k2l1z0x9c8v7b6n5m4q3"},
    "planfix": {"planfix_token": "p" * 32, "pbx_token": "202cb962ac59075b964b07152d234b70"},
    "retailcrm": {"api_key": "r" * 32, "client_id": "2dbh26tahjj26sg"},
    "wirecrm": {"webhook_url": "https://wirecrm.example.test/hook", "pbx_token": "w" * 32},
}
SETTINGS: dict[str, dict[str, Any]] = {
    "rostelecom": {"domain": "acme.rt.ru"},
    "planfix": {"api_url": "https://acme.planfix.example/api"},
    "retailcrm": {"account_url": "https://acme.retailcrm.example"},
}
EXTRA_PATHS = {"mango": ("events/unknown/thing", "result/callback"), "rostelecom": ("nope",)}

CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "text/plain; charset=cp1251",
    "application/octet-stream",
    "",
]
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
BODIES = st.one_of(
    st.binary(max_size=512),
    _json.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=5).map(
        lambda d: urlencode(d).encode()
    ),
    st.sampled_from([b"[" * 3000, b"{" * 70, b'{"a":"\\u0000"}', b"\x00" * 10, b"x" * 70_000]),
)
HEADER_NAMES = ["Range", "X-Client-ID", "X-Client-Sign", "X-Pbx-Authentication", "Accept", "X-Forwarded-For"]
HEADERS = st.dictionaries(
    st.sampled_from(HEADER_NAMES),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    max_size=3,
)
PARAMS = st.dictionaries(
    st.sampled_from(["clientId", "code", "phone", "userId", "status", "x"]), st.text(max_size=20)
)


def _rostelecom(body: bytes, secrets: dict[str, str]) -> dict[str, Any]:
    sign = hashlib.sha256(secrets["client_id"].encode() + body + secrets["sign_key"].encode()).hexdigest()
    return {"body": body, "headers": {"X-Client-ID": secrets["client_id"], "X-Client-Sign": sign}}


def _mango(body: bytes, secrets: dict[str, str]) -> dict[str, Any]:
    text = body.decode("utf-8", "replace")
    sign = hashlib.sha256((secrets["api_key"] + text + secrets["api_salt"]).encode()).hexdigest()
    form = urlencode([("vpbx_api_key", secrets["api_key"]), ("sign", sign), ("json", text)]).encode()
    return {"body": form, "content_type": "application/x-www-form-urlencoded"}


def _planfix(body: bytes, secrets: dict[str, str]) -> dict[str, Any]:
    form = body + b"&token=" + secrets["pbx_token"].encode() + b"&cmd=makeCall"
    return {"body": form, "content_type": "application/x-www-form-urlencoded"}


def _retailcrm(body: bytes, secrets: dict[str, str]) -> dict[str, Any]:
    return {"body": body, "params": {"clientId": secrets["client_id"]}}


def _wirecrm(body: bytes, secrets: dict[str, str]) -> dict[str, Any]:
    return {"body": body, "headers": {"X-Pbx-Authentication": secrets["pbx_token"]}}


# How each provider's sender authenticates; a provider without one is fuzzed without credentials only.
AUTHENTICATE: dict[str, Callable[[bytes, dict[str, str]], dict[str, Any]]] = {
    "rostelecom": _rostelecom,
    "mango": _mango,
    "planfix": _planfix,
    "retailcrm": _retailcrm,
    "wirecrm": _wirecrm,
}
ROW_MODELS = (Call, CallEvent, OutboundJob, JobAttempt, OriginateRequest, RoutingDecision, PlaybackLog)


def rows() -> dict[str, int]:
    counts = {m.__name__: m.objects.count() for m in ROW_MODELS}
    counts["mapping_statuses"] = ExtensionMapping.objects.exclude(status="").count()
    return counts


def inbound_urls() -> list[tuple[str, str]]:
    urls = []
    for key in REGISTRY:
        paths = provider_class(key).inbound_paths or ("",)
        urls += [(key, path) for path in (*paths, *EXTRA_PATHS.get(key, ()))]
    return urls


@pytest.fixture
def fuzz_world(settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    connections = {}
    for key in REGISTRY:
        # A tenant per provider (one active PBX each); CRMs get a PBX too, so click-to-call goes all the way.
        tenant = TenantFactory(slug=f"fuzz-{key.replace('_', '-')}")
        ExtensionFactory(tenant=tenant, number="101")
        if SIDES[key] != "pbx":
            PbxConnectionFactory(
                tenant=tenant,
                provider="rostelecom",
                key="pbx",
                settings=SETTINGS["rostelecom"],
                secrets=SECRETS["rostelecom"],
            )
        factory = PbxConnectionFactory if SIDES[key] == "pbx" else CrmConnectionFactory
        connections[key] = factory(
            tenant=tenant, provider=key, key=key, settings=SETTINGS.get(key, {}), secrets=SECRETS.get(key, {})
        )
    # No outbound request leaves the test: every PBX or CRM call fails as "unreachable".
    with responses.RequestsMock(assert_all_requests_are_fired=False):
        yield connections


def send(
    client, method: str, url: str, body: bytes, content_type: str, headers: dict[str, str], params: dict
):
    meta = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    if params:
        url = f"{url}?{urlencode(params)}"
    if method == "get":
        return client.get(url, **meta)
    return client.generic(method.upper(), url, body, content_type=content_type, **meta)


@pytest.mark.parametrize(("provider", "path"), inbound_urls())
def test_no_input_without_credentials_causes_a_5xx_or_writes_a_row(client, fuzz_world, provider, path):
    url = f"/hooks/{provider}/{fuzz_world[provider].public_id}/{path}"

    @FUZZ
    @given(
        method=st.sampled_from(["post", "get", "put"]),
        body=BODIES,
        content_type=st.sampled_from(CONTENT_TYPES),
        headers=HEADERS,
        params=PARAMS,
    )
    def check(method, body, content_type, headers, params):
        before = rows()
        response = send(client, method, url, body, content_type, headers, params)
        assert response.status_code < 500, (method, body[:80], response.content[:200])
        assert rows() == before, (method, body[:80], response.status_code)

    check()


@pytest.mark.parametrize(
    ("provider", "path"), [(key, path) for key, path in inbound_urls() if key in AUTHENTICATE]
)
def test_no_authenticated_input_causes_a_5xx(client, fuzz_world, provider, path):
    url = f"/hooks/{provider}/{fuzz_world[provider].public_id}/{path}"
    secrets = SECRETS[provider]

    @FUZZ
    @given(
        method=st.sampled_from(["post", "get"]),
        body=BODIES,
        content_type=st.sampled_from(CONTENT_TYPES),
        headers=HEADERS,
        params=PARAMS,
    )
    def check(method, body, content_type, headers, params):
        signed = AUTHENTICATE[provider](body, secrets)
        response = send(
            client,
            method,
            url,
            signed["body"],
            signed.get("content_type", content_type),
            {**headers, **signed.get("headers", {})},
            {**params, **signed.get("params", {})},
        )
        assert response.status_code < 500, (method, signed["body"][:120], response.content[:200])

    check()


def test_no_recording_link_input_causes_a_5xx(client, fuzz_world):
    @FUZZ
    @given(
        token=st.text(
            alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"),
            max_size=120,
        ),
        headers=HEADERS,
    )
    def check(token, headers):
        before = rows()
        response = send(client, "get", f"/records/{token}", b"", "", headers, {})
        assert response.status_code < 500 and rows() == before

    check()
