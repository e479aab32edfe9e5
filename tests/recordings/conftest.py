from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from calls import recordings
from calls.models import Call, Recording
from integrations.providers import base
from tests.factories import CrmConnectionFactory, ExtensionFactory, PbxConnectionFactory, TenantFactory
from tests.pipeline.fake_providers import register
from tests.recordings.providers import LinkPbx

LOOPBACK = [ipaddress.ip_network("127.0.0.1/32")]
# Bytes that look like the start of an MP3 (an ID3 tag), then enough data for several streamed chunks.
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 800


@pytest.fixture(autouse=True)
def fake_providers(monkeypatch):
    for key, path, side in (
        ("fakepbx", "tests.pipeline.fake_providers.FakePbx", base.PBX),
        ("fakecrm", "tests.pipeline.fake_providers.FakeCrm", base.CRM),
        ("linkpbx", "tests.recordings.providers.LinkPbx", base.PBX),
        ("clientidcrm", "tests.recordings.providers.ClientIdCrm", base.CRM),
    ):
        register(monkeypatch, key, path, side)
    LinkPbx.links_given.clear()


@pytest.fixture(autouse=True)
def recordings_storage(settings, tmp_path):
    """Recordings go to a fresh directory per test (the setting_changed signal drops the cached storage)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "recordings": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path},
        },
    }
    return tmp_path


@pytest.fixture
def loopback_allowed(settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK


@pytest.fixture
def tenant(db):
    return TenantFactory(slug="acme")


@pytest.fixture
def pbx(tenant):
    return PbxConnectionFactory(
        tenant=tenant, provider="linkpbx", settings={}, secrets={"token": "pbx-token-123"}
    )


@pytest.fixture
def crm(tenant):
    return CrmConnectionFactory(
        tenant=tenant, provider="fakecrm", key="crm", settings={}, secrets={"token": "t"}
    )


@pytest.fixture
def extensions(tenant):
    return [ExtensionFactory(tenant=tenant, number=n) for n in ("101", "102")]


def stored_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def make_call(pbx):
    counter = iter(range(1, 10_000))

    def make(started_at: dt.datetime | None = None, connection=None) -> Call:
        n = next(counter)
        return Call.objects.create(
            tenant=(connection or pbx).tenant,
            pbx_connection=connection or pbx,
            provider_call_id=f"call-{n}",
            direction=Call.IN,
            client_phone="+79161234567",
            started_at=started_at or timezone.now() - dt.timedelta(minutes=5),
            ended=True,
            result="answered",
            final_for_crm=True,
            recording_expected=True,
        )

    return make


@pytest.fixture
def stored_recording(make_call):
    """stored_recording(data=MP3, content_type="audio/mpeg", started_at=None) -> a Recording in storage."""

    def make(data: bytes = MP3, content_type: str = "audio/mpeg", started_at: dt.datetime | None = None):
        call = make_call(started_at)
        recording = Recording.objects.create(call=call)
        name = recordings.storage().save(f"acme/{recording.pk}.mp3", ContentFile(data))
        Recording.objects.filter(pk=recording.pk).update(
            state=Recording.STORED,
            file=name,
            content_type=content_type,
            size=len(data),
            stored_at=timezone.now() - dt.timedelta(minutes=1),
        )
        recording.refresh_from_db()
        return recording

    return make


# --------------------------------------------------------------------------------------------- loopback PBX


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        answer = self.server.answer(self)
        if answer is None:  # the route wrote its own response
            return
        status, headers, body = answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # keep test output clean
        pass


class PbxServer(ThreadingHTTPServer):
    """A PBX file server on 127.0.0.1: `answer(handler) -> (status, headers, body)`; `seen` lists the paths."""

    daemon_threads = True

    def __init__(self, answer: Callable[[Any], Any]):
        self.answer = answer
        self.seen: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request, client_address):  # a client hanging up early is expected here
        pass


@pytest.fixture
def serve():
    servers: list[PbxServer] = []

    def start(answer: Callable[[Any], Any]) -> PbxServer:
        server = PbxServer(answer)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def mp3_answer(data: bytes = MP3, content_type: str = "audio/mpeg"):
    return 200, {"Content-Type": content_type}, data
