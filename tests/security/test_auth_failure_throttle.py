"""WEBHOOK_AUTH_FAILURE_THROTTLE (issue 15 item 2): past the limit, requests from one client address that fail
authentication get 429 with Retry-After in the provider's error shape until the window passes; requests that
authenticate are never throttled; the address is taken as the /records throttle takes it; a cache outage lets
failures through quickly (fail open)."""

from __future__ import annotations

import ipaddress
import time

import pytest

from integrations import views
from portal import fastcache
from tests.factories import CrmConnectionFactory, ExtensionFactory, PbxConnectionFactory, TenantFactory
from tests.mango import support as mango

pytestmark = pytest.mark.django_db

TOKEN = "wire-token-0123456789abcdef"
T0 = 1_000_040.0  # 20 s into a minute window (windows start at multiples of 60)


@pytest.fixture(autouse=True)
def clock(monkeypatch, settings):
    settings.WEBHOOK_AUTH_FAILURE_THROTTLE = "3/min"
    now = [T0]
    monkeypatch.setattr(views, "_now", lambda: now[0])
    fastcache.reset()
    return now


@pytest.fixture
def wirecrm(db):
    tenant = TenantFactory(slug="acme")
    ExtensionFactory(tenant=tenant, number="101")
    return CrmConnectionFactory(
        tenant=tenant,
        provider="wirecrm",
        key="wire",
        settings={},
        secrets={"webhook_url": "https://wirecrm.example.test/hook", "pbx_token": TOKEN},
    )


def make_call(client, wirecrm, token: str, address: str = "203.0.113.7", **extra):
    return client.post(
        f"/hooks/wirecrm/{wirecrm.public_id}/make-call",
        data="from=101&to=%2B79161234567",
        content_type="application/x-www-form-urlencoded",
        HTTP_X_PBX_AUTHENTICATION=token,
        REMOTE_ADDR=address,
        **extra,
    )


def test_failures_past_the_limit_get_429_with_retry_after_in_the_providers_shape(client, wirecrm):
    statuses = [make_call(client, wirecrm, "wrong").status_code for _ in range(3)]
    response = make_call(client, wirecrm, "wrong")

    assert statuses == [401, 401, 401]
    assert response.status_code == 429
    assert response["Retry-After"] == "40"  # the rest of the minute window
    body = response.json()
    assert body["status"] == "0" and body["error"]  # WireCRM's error shape


def test_authenticated_requests_from_the_same_address_are_never_throttled(client, wirecrm):
    for _ in range(5):
        make_call(client, wirecrm, "wrong")

    response = make_call(client, wirecrm, TOKEN)

    assert response.status_code == 200 and response.json()["status"] in {"0", "1"}


def test_the_throttle_ends_with_the_window(client, wirecrm, clock):
    for _ in range(4):
        make_call(client, wirecrm, "wrong")
    assert make_call(client, wirecrm, "wrong").status_code == 429

    clock[0] = T0 + 60

    assert make_call(client, wirecrm, "wrong").status_code == 401


def test_addresses_are_counted_apart(client, wirecrm):
    for _ in range(4):
        make_call(client, wirecrm, "wrong", address="203.0.113.7")

    assert make_call(client, wirecrm, "wrong", address="203.0.113.7").status_code == 429
    assert make_call(client, wirecrm, "wrong", address="198.51.100.9").status_code == 401


def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(client, wirecrm, settings):
    settings.TRUSTED_PROXY_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    for _ in range(4):
        make_call(client, wirecrm, "wrong", address="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.7")

    assert (
        make_call(
            client, wirecrm, "wrong", address="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.7"
        ).status_code
        == 429
    )
    # Another client behind the same proxy is not punished for the first one's failures.
    assert (
        make_call(
            client, wirecrm, "wrong", address="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.9"
        ).status_code
        == 401
    )


def test_a_pbx_gets_its_own_shape_too(client):
    pbx = PbxConnectionFactory(
        tenant=TenantFactory(slug="mg"),
        provider="mango",
        settings={},
        secrets={"api_key": mango.API_KEY, "api_salt": mango.API_SALT},
    )
    for _ in range(3):
        assert mango.post(client, pbx, "events/call", "{}", salt="wrong-salt").status_code == 403

    response = mango.post(client, pbx, "events/call", "{}", salt="wrong-salt")

    assert response.status_code == 429 and response["Retry-After"]
    assert "result" in response.json() and "error" in response.json()


def test_a_cache_outage_fails_open_and_quickly(client, wirecrm, settings):
    unreachable = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }
    settings.CACHES = {"default": unreachable, "request": unreachable}
    started = time.monotonic()
    statuses = [make_call(client, wirecrm, "wrong").status_code for _ in range(6)]

    assert statuses == [401] * 6
    assert time.monotonic() - started < 3
