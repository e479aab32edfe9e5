"""The outbound HTTP client: SSRF guard, verdicts, masking, limits, redirects, TLS trust.

Real servers run in threads on 127.0.0.1 and 127.0.0.2 (Linux routes all of 127/8 to the loopback interface).
"Nothing connected" is asserted with a raw listening socket: a TCP connection that reached it sits in its accept
queue whether or not anyone accepted it, so a non-blocking accept afterwards sees it without any waiting.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import ipaddress
import logging
import pickle
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests.certs
import responses
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from integrations.http import (
    DEFAULT_TIMEOUT,
    HttpClient,
    OutboundError,
    check_url,
    parse_retry_after,
    tls_verify_value,
)
from tests.listener import Listener

LOOPBACK_2 = [ipaddress.ip_network("127.0.0.2/32")]


# --------------------------------------------------------------------------------------------- test servers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(
            SimpleNamespace(method=self.command, path=self.path, headers=dict(self.headers), body=body)
        )
        route = self.server.routes.get(self.path.split("?")[0], (404, {}, b"no such route"))
        if callable(route):
            route(self)
            return
        status, headers, payload = route
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, format, *args):  # keep test output clean
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, routes: dict, port: int = 0, tls: ssl.SSLContext | None = None):
        self.routes = routes
        self.seen: list[SimpleNamespace] = []
        super().__init__((host, port), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.host, self.port = self.server_address[:2]

    def url(self, path: str = "/", *, scheme: str | None = None, host: str | None = None) -> str:
        scheme = scheme or ("https" if isinstance(self.socket, ssl.SSLSocket) else "http")
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    def handle_error(self, request, client_address):  # a client hanging up early is expected in these tests
        pass


@pytest.fixture
def serve():
    """serve(host, routes, port=0, tls=None) -> a running _Server, stopped after the test."""
    servers: list[_Server] = []

    def start(host: str, routes: dict, port: int = 0, tls: ssl.SSLContext | None = None) -> _Server:
        server = _Server(host, routes, port, tls)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def client():
    http = HttpClient()
    yield http
    http.close()


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def resolver(monkeypatch):
    """A stub DNS: `resolver.names[host]` is a list of IPv4 addresses, or a callable returning one per lookup."""
    real = socket.getaddrinfo
    stub = SimpleNamespace(names={}, lookups=[])

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in stub.names:
            return real(host, port, family, type, proto, flags)
        stub.lookups.append(host)
        answer = stub.names[host]
        addresses = answer() if callable(answer) else answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return stub


# A refused request never waits; if the guard were broken, a short timeout makes the test fail fast.
FAST = (1, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------- SSRF guard


def test_loopback_is_refused_by_default_without_opening_a_connection(client, listener):
    with pytest.raises(OutboundError) as exc:
        client.request("GET", listener.url("/admin"), timeout=FAST)
    assert exc.value.permanent and exc.value.kind == "refused"
    assert "loopback" in str(exc.value)
    assert listener.connections() == 0


def test_allowed_network_lets_its_host_through(client, serve, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    server = serve("127.0.0.2", {"/ok": (200, {"Content-Type": "application/json"}, b'{"ok": true}')})
    response = client.request("GET", server.url("/ok"))
    assert response.json() == {"ok": True}
    assert [r.path for r in server.seen] == ["/ok"]


def test_allowed_network_does_not_open_the_rest_of_loopback(client, listener, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    with pytest.raises(OutboundError) as exc:
        client.request("GET", listener.url(), timeout=FAST)
    assert exc.value.kind == "refused"
    assert listener.connections() == 0


def test_redirect_from_an_allowed_host_to_loopback_is_refused(client, serve, listener, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    server = serve("127.0.0.2", {"/hop": (302, {"Location": listener.url("/internal")}, b"")})
    with pytest.raises(OutboundError) as exc:
        client.request("GET", server.url("/hop"), timeout=FAST)
    assert exc.value.permanent and exc.value.kind == "refused"
    assert [r.path for r in server.seen] == ["/hop"]
    assert listener.connections() == 0


def test_redirect_to_a_host_name_resolving_to_loopback_is_refused_at_connect_time(
    client, serve, listener, settings
):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    server = serve("127.0.0.2", {"/hop": (307, {"Location": f"http://localhost:{listener.port}/"}, b"")})
    with pytest.raises(OutboundError) as exc:
        client.request("GET", server.url("/hop"), timeout=FAST)
    assert exc.value.kind == "refused" and "localhost" in str(exc.value)
    assert listener.connections() == 0


def test_host_name_resolving_to_loopback_is_refused(client, listener):
    with pytest.raises(OutboundError) as exc:
        client.request("GET", f"http://localhost:{listener.port}/", timeout=FAST)
    assert exc.value.permanent and exc.value.kind == "refused"
    assert listener.connections() == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://100.64.0.1/",
        "http://192.168.1.1/",
        "http://0.0.0.0:8000/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fd00::1]/",
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://127.1/",
        "file:///etc/passwd",
        "gopher://example.com/_SMTP",
        "ftp://example.com/file",
        "https://example.com:25/",
        "http:///no-host",
    ],
)
def test_forbidden_urls_are_refused_before_any_request(client, mocked, url):
    # `responses` sits above the connect-time guard, so this proves the pre-flight check alone refuses them.
    mocked.add(responses.GET, url, body="should never be served")
    with pytest.raises(OutboundError) as exc:
        client.request("GET", url)
    assert exc.value.permanent
    assert exc.value.kind in {"refused", "invalid_url"}
    assert len(mocked.calls) == 0


def test_a_name_with_any_forbidden_answer_is_refused(client, resolver, listener):
    resolver.names["mixed.callbridge.test"] = ["93.184.216.34", "127.0.0.1"]
    with pytest.raises(OutboundError) as exc:
        client.request("GET", f"http://mixed.callbridge.test:{listener.port}/", timeout=FAST)
    assert exc.value.kind == "refused" and "127.0.0.1" in str(exc.value)
    assert listener.connections() == 0


def test_the_connection_goes_to_the_checked_address_even_if_dns_changes(client, serve, resolver, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    server = serve("127.0.0.2", {"/": (200, {}, b"checked")})
    try:
        trap = Listener("127.0.0.1", server.port)
    except OSError:
        pytest.skip("127.0.0.1 has the same port taken")
    answers = iter([["127.0.0.2"]])
    resolver.names["rebind.callbridge.test"] = lambda: next(answers, ["127.0.0.1"])  # second answer: loopback
    try:
        response = client.request("GET", f"http://rebind.callbridge.test:{server.port}/")
        assert response.text == "checked"
        assert server.seen[0].headers["Host"] == f"rebind.callbridge.test:{server.port}"
        assert resolver.lookups == ["rebind.callbridge.test"]
        assert trap.connections() == 0
    finally:
        trap.close()


def test_check_url_validates_user_entered_urls_without_resolving_them():
    check_url("https://crm.example.com/api")
    for url in ("http://169.254.169.254/", "gopher://crm.example.com/", "https://crm.example.com:25/"):
        with pytest.raises(OutboundError):
            check_url(url)


def test_allow_private_networks_lets_loopback_through(client, serve, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True
    server = serve("127.0.0.1", {"/": (200, {}, b"hello")})
    assert client.request("GET", server.url("/")).text == "hello"
    assert client.request("GET", server.url("/", host="localhost")).text == "hello"


# --------------------------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
def test_server_errors_throttling_and_request_timeouts_are_transient(client, mocked, status):
    mocked.add(responses.POST, "https://crm.example.com/api", status=status, body="try later")
    with pytest.raises(OutboundError) as exc:
        client.request("POST", "https://crm.example.com/api", json={"a": 1})
    assert exc.value.transient and exc.value.status == status and exc.value.kind == "status"
    assert exc.value.body == "try later"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_client_errors_are_permanent(client, mocked, status):
    mocked.add(responses.GET, "https://crm.example.com/api", status=status, json={"errorMsg": "nope"})
    with pytest.raises(OutboundError) as exc:
        client.request("GET", "https://crm.example.com/api")
    assert exc.value.permanent and exc.value.status == status
    assert "nope" in exc.value.body


def test_real_server_503_is_transient_with_its_retry_after(client, serve, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    server = serve("127.0.0.2", {"/busy": (503, {"Retry-After": "120"}, b"maintenance")})
    with pytest.raises(OutboundError) as exc:
        client.request("GET", server.url("/busy"))
    assert exc.value.transient and exc.value.status == 503
    assert exc.value.retry_after == 120.0 and exc.value.body == "maintenance"


def test_read_timeout_is_transient(client, listener, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = (
        True  # the listener accepts the TCP connection and stays silent
    )
    with pytest.raises(OutboundError) as exc:
        client.request("GET", listener.url(), timeout=(2, 0.2))
    assert exc.value.transient and exc.value.kind == "timeout" and exc.value.status is None


def test_connection_refused_is_transient(client, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True
    with pytest.raises(OutboundError) as exc:
        client.request("GET", f"http://127.0.0.1:{_free_port()}/")
    assert exc.value.transient and exc.value.kind == "connection"


def test_a_request_without_timeout_is_a_programming_error(client):
    with pytest.raises(ValueError):
        client.request("GET", "https://crm.example.com/", timeout=None)


def test_large_error_bodies_are_truncated(client, mocked):
    mocked.add(responses.GET, "https://crm.example.com/api", status=400, body="x" * 100_000)
    with pytest.raises(OutboundError) as exc:
        client.request("GET", "https://crm.example.com/api")
    assert 2000 <= len(exc.value.body) <= 2100


def test_outbound_error_survives_pickling():
    error = OutboundError("boom", permanent=False, kind="status", status=503, body="b", retry_after=5.0)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.status, copy.permanent, copy.retry_after, copy.body) == (
        "boom",
        503,
        False,
        5.0,
        "b",
    )


# --------------------------------------------------------------------------------------------- Retry-After


def test_retry_after_in_seconds():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0


def test_retry_after_as_http_date():
    now = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("Sun, 01 Mar 2026 12:01:30 GMT", now=now) == 90.0
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "-"])
def test_unusable_retry_after_is_none(value):
    assert parse_retry_after(value) is None


def test_retry_after_reaches_the_error(client, mocked):
    mocked.add(responses.GET, "https://crm.example.com/api", status=429, headers={"Retry-After": "7"})
    with pytest.raises(OutboundError) as exc:
        client.request("GET", "https://crm.example.com/api")
    assert exc.value.retry_after == 7.0 and exc.value.transient


# --------------------------------------------------------------------------------------------- secrets and headers


def test_secrets_are_masked_in_logs_errors_and_bodies(client, mocked, caplog):
    caplog.set_level(logging.DEBUG, logger="integrations.http")
    secret = "rc-TOPSECRET-42"
    url = f"https://crm.example.com/api/v5/telephony/call/event?apiKey={secret}"
    mocked.add(responses.POST, url, status=401, body=f'{{"errorMsg": "wrong apiKey {secret}"}}')
    with pytest.raises(OutboundError) as exc:
        client.request("POST", url, headers={"X-API-KEY": secret}, data={"k": secret}, secrets=[secret])
    error = exc.value
    assert error.permanent
    for text in (str(error), error.url, error.body, caplog.text):
        assert secret not in text
    assert "***" in error.url and "***" in error.body
    assert "crm.example.com/api/v5/telephony/call/event" in caplog.text


def test_credential_looking_query_values_are_masked_even_when_not_listed(client, mocked, caplog):
    caplog.set_level(logging.DEBUG, logger="integrations.http")
    mocked.add(responses.GET, "https://crm.example.com/api", status=200, body="{}")
    client.request("GET", "https://crm.example.com/api?token=unlisted-value&page=2")
    assert "unlisted-value" not in caplog.text and "page=2" in caplog.text


def test_secrets_in_connection_errors_are_masked(client, settings, caplog):
    caplog.set_level(logging.DEBUG, logger="integrations.http")
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True
    with pytest.raises(OutboundError) as exc:
        client.request("GET", f"http://127.0.0.1:{_free_port()}/x?sid=s3cr3t-value", secrets=["s3cr3t-value"])
    assert "s3cr3t-value" not in str(exc.value) and "s3cr3t-value" not in caplog.text


def test_user_agent_names_the_portal(client, mocked, settings):
    settings.PUBLIC_BASE_URL = "https://portal.example.org"
    mocked.add(responses.GET, "https://crm.example.com/", body="ok")
    client.request("GET", "https://crm.example.com/")
    agent = mocked.calls[0].request.headers["User-Agent"]
    assert agent.startswith("Callbridge/") and agent.endswith("(+https://portal.example.org)")


# --------------------------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303])
def test_a_post_answered_with_a_body_dropping_redirect_is_a_delivery_failure(client, mocked, status):
    """Issue 15: following it would re-send the message as a GET without its body and count it delivered."""
    mocked.add(responses.POST, "https://crm.example.com/a", status=status, headers={"Location": "/b"})
    mocked.add(responses.GET, "https://crm.example.com/b", body="done")
    with pytest.raises(OutboundError) as exc:
        client.request("POST", "https://crm.example.com/a", json={"x": 1})
    assert exc.value.permanent and exc.value.kind == "redirect" and exc.value.status == status
    assert len(mocked.calls) == 1


def test_see_other_after_a_get_is_followed(client, mocked):
    mocked.add(responses.GET, "https://crm.example.com/a", status=303, headers={"Location": "/b"})
    mocked.add(responses.GET, "https://crm.example.com/b", body="done")
    assert client.request("GET", "https://crm.example.com/a").text == "done"


def test_a_temporary_redirect_of_a_post_to_another_origin_is_not_followed(client, mocked):
    mocked.add(
        responses.POST,
        "https://crm.example.com/a",
        status=307,
        headers={"Location": "https://elsewhere.example.net/c"},
    )
    mocked.add(responses.POST, "https://elsewhere.example.net/c", body="done")
    with pytest.raises(OutboundError) as exc:
        client.request("POST", "https://crm.example.com/a", json={"x": 1}, headers={"Authorization": "k"})
    assert exc.value.kind == "redirect" and len(mocked.calls) == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_redirect_from_https_to_http_is_refused(client, mocked, method):
    mocked.add(
        getattr(responses, method),
        "https://crm.example.com/a",
        status=307,
        headers={"Location": "http://crm.example.com/a"},
    )
    with pytest.raises(OutboundError) as exc:
        client.request(method, "https://crm.example.com/a")
    assert exc.value.kind == "redirect" and "plain http" in str(exc.value) and len(mocked.calls) == 1


def test_credentials_never_travel_over_plain_http_to_a_public_host(client, mocked):
    mocked.add(responses.POST, "http://crm.example.com/a", body="ok")
    with pytest.raises(OutboundError) as exc:
        client.request("POST", "http://crm.example.com/a", data={"token": "s3cret"}, secrets=["s3cret"])
    assert exc.value.kind == "refused" and "https" in str(exc.value) and len(mocked.calls) == 0


def test_credentials_may_use_plain_http_to_an_allowed_private_network(client, mocked, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = [ipaddress.ip_network("10.20.0.0/16")]
    mocked.add(responses.POST, "http://10.20.1.5/a", body="ok")
    assert client.request("POST", "http://10.20.1.5/a", secrets=["s3cret"]).text == "ok"


def test_temporary_redirect_keeps_method_and_body(client, mocked):
    mocked.add(responses.POST, "https://crm.example.com/a", status=307, headers={"Location": "/c"})
    mocked.add(responses.POST, "https://crm.example.com/c", body="done")
    client.request("POST", "https://crm.example.com/a", json={"x": 1})
    follow = mocked.calls[1].request
    assert (follow.method, follow.body) == ("POST", b'{"x": 1}')


def test_credentials_do_not_follow_a_redirect_to_another_origin(client, mocked):
    mocked.add(
        responses.GET,
        "https://crm.example.com/a",
        status=302,
        headers={"Location": "https://cdn.example.net/f"},
    )
    mocked.add(responses.GET, "https://cdn.example.net/f", body="file")
    client.request(
        "GET", "https://crm.example.com/a", headers={"Authorization": "Bearer t", "X-API-KEY": "k"}
    )
    follow = mocked.calls[1].request.headers
    assert "Authorization" not in follow and "X-API-KEY" not in follow
    assert follow["User-Agent"].startswith("Callbridge/")


def test_redirect_loops_stop_after_max_redirects(client, mocked):
    mocked.add(responses.GET, "https://crm.example.com/loop", status=302, headers={"Location": "/loop"})
    with pytest.raises(OutboundError) as exc:
        client.request("GET", "https://crm.example.com/loop", max_redirects=3)
    assert exc.value.permanent and exc.value.kind == "redirect"
    assert len(mocked.calls) == 4


def test_redirect_not_followed_is_a_permanent_error(client, mocked):
    mocked.add(responses.GET, "https://crm.example.com/a", status=302, headers={"Location": "/b"})
    with pytest.raises(OutboundError) as exc:
        client.request("GET", "https://crm.example.com/a", allow_redirects=False)
    assert exc.value.permanent and exc.value.status == 302


def test_redirect_to_another_scheme_is_refused(client, mocked):
    mocked.add(
        responses.GET, "https://crm.example.com/a", status=302, headers={"Location": "file:///etc/passwd"}
    )
    with pytest.raises(OutboundError) as exc:
        client.request("GET", "https://crm.example.com/a")
    assert exc.value.kind == "refused" and len(mocked.calls) == 1


# --------------------------------------------------------------------------------------------- size limits


def _close_delimited(payload: bytes, content_type: str = "audio/mpeg"):
    """A route answering without Content-Length: the body ends when the connection closes."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.wfile.write(payload)

    return route


def _lying_length(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "audio/mpeg")
    handler.send_header("Content-Length", str(1024**3))
    handler.end_headers()
    handler.close_connection = True


def test_download_streams_into_the_file(client, serve, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    payload = bytes(range(256)) * 400
    server = serve("127.0.0.2", {"/rec.mp3": (200, {"Content-Type": "audio/mpeg"}, payload)})
    dest = io.BytesIO()
    assert client.download(server.url("/rec.mp3"), dest, max_bytes=len(payload)) == (
        "audio/mpeg",
        len(payload),
    )
    assert dest.getvalue() == payload


def test_download_refuses_a_content_length_over_the_limit(client, serve, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    server = serve("127.0.0.2", {"/huge.mp3": _lying_length})
    dest = io.BytesIO()
    with pytest.raises(OutboundError) as exc:
        client.download(server.url("/huge.mp3"), dest, max_bytes=1024 * 1024)
    assert exc.value.permanent and exc.value.kind == "too_large"
    assert dest.getvalue() == b""


def test_download_stops_once_the_streamed_size_passes_the_limit(client, serve, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    server = serve("127.0.0.2", {"/endless.mp3": _close_delimited(b"\0" * 300_000)})
    dest = io.BytesIO()
    with pytest.raises(OutboundError) as exc:
        client.download(server.url("/endless.mp3"), dest, max_bytes=100_000)
    assert exc.value.kind == "too_large" and exc.value.permanent
    assert len(dest.getvalue()) <= 100_000


def test_download_refuses_an_unexpected_content_type(client, serve, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    server = serve("127.0.0.2", {"/rec": (200, {"Content-Type": "text/html; charset=utf-8"}, b"<html>")})
    with pytest.raises(OutboundError) as exc:
        client.download(server.url("/rec"), io.BytesIO(), max_bytes=1000, allowed_content_types=["audio/"])
    assert exc.value.permanent and exc.value.kind == "content_type"


def test_in_memory_body_is_bounded_by_max_bytes(client, serve, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    server = serve("127.0.0.2", {"/big": _close_delimited(b"{" * 50_000, "application/json")})
    with pytest.raises(OutboundError) as exc:
        client.request("GET", server.url("/big"), max_bytes=10_000)
    assert exc.value.kind == "too_large"


# --------------------------------------------------------------------------------------------- TLS trust


@pytest.fixture(scope="module")
def private_pki(tmp_path_factory):
    """A private CA and a certificate it issued for pbx.callbridge.test; returns paths and a server context."""
    directory = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("Callbridge Test CA"))
        .issuer_name(name("Callbridge Test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(name("pbx.callbridge.test"))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("pbx.callbridge.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain_path = directory / "leaf.pem"
    chain_path.write_bytes(
        leaf_cert.public_bytes(serialization.Encoding.PEM)
        + leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_path)
    return SimpleNamespace(ca=str(ca_path), server_context=context)


@pytest.fixture
def tls_pbx(serve, resolver, settings, private_pki):
    settings.OUTBOUND_ALLOWED_NETWORKS = LOOPBACK_2
    resolver.names["pbx.callbridge.test"] = ["127.0.0.2"]
    return serve("127.0.0.2", {"/": (200, {}, b"secure")}, tls=private_pki.server_context)


def test_an_untrusted_certificate_is_a_permanent_error_naming_the_setting(client, tls_pbx):
    with pytest.raises(OutboundError) as exc:
        client.request("GET", tls_pbx.url("/", host="pbx.callbridge.test"))
    assert exc.value.permanent and exc.value.kind == "tls"
    assert "OUTBOUND_CA_BUNDLE" in str(exc.value)


def test_ca_bundle_adds_a_private_ca_and_checks_the_host_name(client, tls_pbx, settings, private_pki):
    settings.OUTBOUND_CA_BUNDLE = private_pki.ca
    response = client.request("GET", tls_pbx.url("/", host="pbx.callbridge.test"))
    assert response.text == "secure"
    assert tls_pbx.seen[0].headers["Host"] == f"pbx.callbridge.test:{tls_pbx.port}"
    # The certificate names the host, not the address: connecting by IP must fail verification.
    with pytest.raises(OutboundError) as exc:
        client.request("GET", tls_pbx.url("/"))
    assert exc.value.kind == "tls"


def test_ca_bundle_is_added_to_the_public_cas_not_substituted(settings, private_pki):
    settings.OUTBOUND_CA_BUNDLE = private_pki.ca
    merged = Path(tls_verify_value()).read_bytes()
    assert Path(requests.certs.where()).read_bytes().strip() in merged
    assert Path(private_pki.ca).read_bytes().strip() in merged


def test_the_merged_ca_bundle_is_written_to_a_private_unpredictable_path(settings, private_pki, tmp_path):
    """Issue 15: a fixed name in the shared temp directory could be planted first by another local user."""
    import hashlib
    import stat
    import tempfile

    settings.OUTBOUND_CA_BUNDLE = private_pki.ca
    with open(requests.certs.where(), "rb") as public, open(private_pki.ca, "rb") as own:
        merged = public.read().rstrip(b"\n") + b"\n" + own.read()
    predictable = Path(tempfile.gettempdir()) / f"callbridge-ca-{hashlib.sha256(merged).hexdigest()[:16]}.pem"

    path = Path(tls_verify_value())

    assert path != predictable
    assert path.parent != Path(tempfile.gettempdir())
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.parent.name) >= len("callbridge-ca-") + 8  # a random part


def test_default_timeout_is_a_connect_and_read_pair():
    assert len(DEFAULT_TIMEOUT) == 2 and all(t > 0 for t in DEFAULT_TIMEOUT)


# --------------------------------------------------------------------------------------------- probe (no request)


def test_probe_checks_dns_and_the_certificate_without_sending_a_request(tls_pbx, settings, private_pki):
    """WireCRM's Test connection: the URL, its name and its TLS certificate, and not one HTTP request."""
    from integrations.http import probe

    settings.OUTBOUND_CA_BUNDLE = private_pki.ca
    found = probe(tls_pbx.url("/hook", host="pbx.callbridge.test"))
    assert found.tls and found.addresses == ("127.0.0.2",)
    assert "pbx.callbridge.test" in found.certificate_subject and found.certificate_expires
    assert tls_pbx.seen == []


def test_probe_refuses_an_untrusted_certificate(tls_pbx):
    from integrations.http import probe

    with pytest.raises(OutboundError) as exc:
        probe(tls_pbx.url("/hook", host="pbx.callbridge.test"))
    assert exc.value.kind == "tls" and exc.value.permanent


def test_probe_refuses_a_private_address_outside_the_allowed_networks(resolver, settings):
    from integrations.http import probe

    settings.OUTBOUND_ALLOWED_NETWORKS = []
    resolver.names["crm.callbridge.test"] = ["10.1.2.3"]
    with pytest.raises(OutboundError) as exc:
        probe("https://crm.callbridge.test/hook")
    assert exc.value.kind == "refused" and "10.1.2.3" in str(exc.value)
