"""Fixtures of the sandbox and simulator tests: a tenant with three extensions, a DID, the sandbox CRM with one
routing-table row and (`pbx`) the sandbox PBX, SANDBOX_ENABLED on, recordings under a temporary folder; and for the
end-to-end tests a live portal (`portal`), a real Celery worker (`worker`) and the relay ticking like beat
(`beat`)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.core.files.storage import FileSystemStorage

from calls import outbox
from integrations.providers.sandbox.models import SandboxContact
from portal.celery import app
from tests.factories import (
    CrmConnectionFactory,
    ExtensionFactory,
    ExternalPhoneFactory,
    PbxConnectionFactory,
    TenantFactory,
)
from tests.inbox import process_inbox, pump

CALLER = "+79161110022"
DID = "+74950000001"
SIGNING_KEY = "sandbox-signing-key-0123456789"
RECORDS = "https://records.pbx.example"
MP3 = b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 500


@pytest.fixture(autouse=True)
def sandbox_enabled(settings):
    settings.SANDBOX_ENABLED = True


@pytest.fixture
def recordings_in_tmp(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "recordings": {
            "BACKEND": f"{FileSystemStorage.__module__}.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }


@pytest.fixture
def tenant(db):
    tenant = TenantFactory(slug="contract", region="RU")
    for number in ("101", "102", "103"):
        ExtensionFactory(tenant=tenant, number=number)
    ExternalPhoneFactory(tenant=tenant, number=DID)
    return tenant


@pytest.fixture
def pbx(tenant):
    return PbxConnectionFactory(
        tenant=tenant,
        key="sandbox",
        provider="sandbox_pbx",
        settings={},
        secrets={"signing_key": SIGNING_KEY},
    )


@pytest.fixture
def sandbox_crm(tenant):
    crm = CrmConnectionFactory(
        tenant=tenant, key="sandbox-crm", provider="sandbox_crm", settings={}, secrets={}
    )
    SandboxContact.objects.create(crm_connection=crm, phone=CALLER, name="Ivan Petrov", extension="102")
    return crm


@pytest.fixture
def crm(sandbox_crm):
    return sandbox_crm


def run_due(rounds: int = 30) -> None:
    """Relay passes whose published tasks run inline (the live-server tests use a real worker)."""
    for _ in range(rounds):
        process_inbox()  # what the played webhooks stored
        outbox.relay(publish=lambda owner, ids: outbox.run_claim(owner, ids))
    process_inbox()


def post_simulated(client: Any, requests: list[Any]) -> list[Any]:
    answers = []
    for item in requests:
        response = client.post(
            item.path, data=item.body, content_type="application/json", headers=item.headers
        )
        assert response.status_code == 200, response.content
        answers.append(response)
    return answers


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.25) -> bool:
    """Poll with relay passes in between (beat is not running in tests); a bound, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            pump()
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def portal(live_server, settings, recordings_in_tmp) -> str:
    """The live server's URL, which is also the portal's PUBLIC_BASE_URL (recording links, inbound URLs)."""
    settings.PUBLIC_BASE_URL = live_server.url
    settings.OUTBOX_TIME_SCALE = 0.05  # retry 10 s → 0.5 s: a recording "not ready yet" is asked again soon
    return live_server.url


@pytest.fixture
def worker(portal) -> Iterator[None]:
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


@pytest.fixture
def beat(worker) -> Iterator[None]:
    """The relay every half second in a thread, as beat runs it, for tests whose calls play in real time (a
    pop-up must go out while the call still rings)."""
    from django.db import connection

    stop = threading.Event()

    def loop() -> None:
        try:
            while not stop.wait(0.5):
                with contextlib.suppress(Exception):
                    pump()
        finally:
            connection.close()

    thread = threading.Thread(target=loop, name="test-beat", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)
