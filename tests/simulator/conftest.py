"""A live portal and a real Celery worker for the simulator's tests: `simulate_call` posts over HTTP to the live
server, the worker sends what the outbox holds, and the tests wait (bounded) for the outcome."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from celery.contrib.testing.worker import start_worker
from django.core.files.storage import FileSystemStorage

from calls import outbox
from integrations.providers.sandbox.models import SandboxContact
from portal.celery import app
from tests.factories import CrmConnectionFactory, ExtensionFactory, ExternalPhoneFactory, TenantFactory

CALLER = "+79161110022"
DID = "+74950000001"
RECORDS = "https://records.pbx.example"
MP3 = b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 500


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.25) -> bool:
    """Poll with relay passes in between (beat is not running in tests); a bound, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            outbox.relay()
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def portal(live_server, settings, tmp_path) -> str:
    """The live server's URL, which is also the portal's PUBLIC_BASE_URL (recording links, inbound URLs)."""
    settings.PUBLIC_BASE_URL = live_server.url
    settings.SANDBOX_ENABLED = True
    settings.OUTBOX_TIME_SCALE = 0.05  # retry 10 s → 0.5 s: a recording "not ready yet" is asked again soon
    settings.STORAGES = {
        **settings.STORAGES,
        "recordings": {
            "BACKEND": f"{FileSystemStorage.__module__}.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    return live_server.url


@pytest.fixture
def tenant(db):
    tenant = TenantFactory(slug="contract", region="RU")
    for number in ("101", "102", "103"):
        ExtensionFactory(tenant=tenant, number=number)
    ExternalPhoneFactory(tenant=tenant, number=DID)
    return tenant


@pytest.fixture
def sandbox_crm(tenant):
    crm = CrmConnectionFactory(
        tenant=tenant, key="sandbox-crm", provider="sandbox_crm", settings={}, secrets={}
    )
    SandboxContact.objects.create(crm_connection=crm, phone=CALLER, name="Ivan Petrov", extension="101")
    return crm


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
                    outbox.relay()
        finally:
            connection.close()

    thread = threading.Thread(target=loop, name="test-beat", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)
