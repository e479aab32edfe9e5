"""The one outbound HTTP client every provider uses.

What it guarantees, whoever calls it:

* mandatory connect and read timeouts and, inside :func:`deadline`, a total deadline over connect, send and
  the whole body (a watchdog shuts the socket of a server that trickles its answer), a
  ``Callbridge/<version> (+PUBLIC_BASE_URL)`` User-Agent, TLS
  verification always on (``OUTBOUND_CA_BUNDLE`` adds CAs to the public ones, it never replaces them);
* every failure becomes one :class:`OutboundError` carrying the status, a truncated body, ``Retry-After`` and a
  permanent/transient verdict the outbox acts on;
* the values passed as ``secrets`` (and credential-looking query parameters) never reach a log line, an error
  message, ``OutboundError.url`` or ``OutboundError.body``;
* an SSRF guard: only http and https; no connection to loopback, private, link-local, multicast, reserved or
  other special-purpose addresses unless ``OUTBOUND_ALLOW_PRIVATE_NETWORKS`` is on or the address lies in
  ``OUTBOUND_ALLOWED_NETWORKS``. Both settings are read at call time.

Where the guard sits. The address check runs when a socket is opened (:class:`_GuardedConnectionMixin`): the host
name is resolved once, every resolved address is checked, and the socket connects to an address that was checked,
so a DNS answer that changes between check and connect (rebinding) cannot slip through. The Host header, TLS SNI
and certificate verification keep using the host name. Redirects are followed here, hop by hop, so each hop goes
through the same checks. The ``responses`` test library replaces ``HTTPAdapter.send``, which is *above* the
connection layer, so under ``responses`` the connect-time check never runs; a pre-flight check of the scheme, the
port and literal IP hosts runs before ``send`` and therefore still refuses obviously forbidden URLs in tests
that mock HTTP.

This module imports no domain code: only Django settings, requests, urllib3 and the standard library.
"""

from __future__ import annotations

import contextlib
import contextvars
import email.utils
import ipaddress
import logging
import os
import re
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import IO, Any
from urllib.parse import quote, quote_plus, urljoin, urlsplit, urlunsplit

import requests
import requests.certs
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Timeout = float | tuple[float, float]

DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10)
# A body read into memory (stream=False) without an explicit max_bytes is still bounded, so a hostile or broken
# server cannot exhaust a worker's memory. Large files go through download() with their own limit.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
ERROR_BODY_CHARS = 2048
MAX_REDIRECTS = 5

_ALLOWED_SCHEMES = frozenset({"http", "https"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES = frozenset({408, 429})
# Headers that may follow a redirect to another origin; anything else (Authorization, Cookie, X-API-Key, ...)
# could carry a credential meant only for the first host.
_CROSS_ORIGIN_SAFE_HEADERS = frozenset(
    {"user-agent", "accept", "accept-encoding", "accept-language", "content-type", "content-length"}
)
# The Fetch standard's "bad ports": services that talk something other than HTTP, which a forged URL could
# otherwise poke at (SMTP on 25 is the classic).
# fmt: off
_BAD_PORTS = frozenset({
    0, 1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101, 102, 103, 104,
    109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427, 465, 512, 513, 514, 515, 526,
    530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045,
    4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080,
})
# fmt: on
# Query parameters whose value is masked in logs even when the caller forgot to list it in `secrets`.
_CREDENTIAL_QUERY = re.compile(
    r"(?i)([?&;][^=&\s]*(?:key|token|secret|passw|signature|sign|auth)[^=&\s]*=)[^&#\s'\"]+"
)


# --------------------------------------------------------------------------------------------- the error


class OutboundError(Exception):
    """Any failure of an outbound request.

    ``permanent`` is the verdict the outbox acts on: a permanent failure will fail the same way on every retry
    (4xx other than 408/429, a refused target, a certificate the CA bundle does not trust, a body over the limit);
    a transient one may succeed later (timeouts, connection errors, 408, 429, 5xx). ``kind`` says which family
    the failure belongs to: refused, invalid_url, timeout, connection, tls, status, redirect, too_large,
    content_type.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        kind: str,
        url: str = "",
        method: str = "",
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
        location: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.kind = kind
        self.url = url
        self.method = method
        self.status = status
        self.body = body
        self.retry_after = retry_after
        # A redirect that was not followed (allow_redirects=False): where it pointed, absolute. Some APIs answer
        # with a temporary download link this way (Mango queries/recording/post); never logged.
        self.location = location

    @property
    def transient(self) -> bool:
        return not self.permanent

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments break the default exception pickling (Celery may pickle exceptions).
        return (_restore_error, (type(self), self.message, dict(self.__dict__)))


def _restore_error(cls: type[OutboundError], message: str, state: dict[str, Any]) -> OutboundError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class _RefusedTarget(Exception):
    """Raised inside the connection layer; deliberately not an OSError so urllib3 and requests let it through."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"{host} resolves to {address} ({reason})")
        self.host = host
        self.address = address
        self.reason = reason


# --------------------------------------------------------------------------------------------- masking


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace every secret (as is and URL-encoded) and credential-looking query values with ``***``."""
    variants: set[str] = set()
    for secret in secrets:
        if secret:
            secret = str(secret)
            variants.update({secret, quote(secret, safe=""), quote_plus(secret)})
    for variant in sorted(variants, key=len, reverse=True):
        text = text.replace(variant, "***")
    return _CREDENTIAL_QUERY.sub(r"\1***", text)


def mask_url(url: str, secrets: Iterable[str] = ()) -> str:
    """The URL as it may appear in logs and errors: no user:password part, secrets masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    except ValueError:
        pass
    return mask(url, secrets)


# --------------------------------------------------------------------------------------------- address policy

_FORBIDDEN_V4 = tuple(
    (ipaddress.IPv4Network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)
_FORBIDDEN_V6 = tuple(
    (ipaddress.IPv6Network(net), reason)
    for net, reason in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/32", "Teredo"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "SRv6 SIDs"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 transition address carries, so a wrapped 127.0.0.1 is judged as 127.0.0.1."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    # Deprecated IPv4-compatible addresses (::a.b.c.d) are not unwrapped: they fall in ::/8 and are refused.
    return None


def _forbidden_reason(ip: IPAddress) -> str | None:
    """Why this address is never a legitimate public endpoint, or None if it is one."""
    if isinstance(ip, ipaddress.IPv6Address):
        wrapped = _embedded_ipv4(ip)
        if wrapped is not None:
            wrapper, inner = wrapped
            inner_reason = _forbidden_reason(inner)
            return f"{wrapper} {inner}: {inner_reason}" if inner_reason else None
        table: tuple[tuple[Any, str], ...] = _FORBIDDEN_V6
    else:
        table = _FORBIDDEN_V4
    for network, reason in table:
        if ip in network:
            return reason
    # The explicit tables above are the contract; Python's own registry catches anything they miss.
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def _parse_ip(value: str | IPAddress) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    # getaddrinfo may return "fe80::1%eth0"; the zone does not change what the address is.
    return ipaddress.ip_address(str(value).strip("[]").split("%", 1)[0])


# The connection being served may reach a few private networks of its own (PbxConnection/CrmConnection
# `allowed_networks`): one customer's intranet PBX is reachable for that connection alone. Set around the work
# done for one connection with connection_networks(); a context variable, so threads and requests never mix.
_connection_networks: contextvars.ContextVar[tuple[Network, ...]] = contextvars.ContextVar(
    "callbridge_connection_networks", default=()
)


@contextlib.contextmanager
def connection_networks(networks: Iterable[str | Network]) -> Iterator[None]:
    """Allow these CIDRs (besides OUTBOUND_ALLOWED_NETWORKS) for the requests made inside the block."""
    parsed = tuple(n if not isinstance(n, str) else ipaddress.ip_network(n, strict=False) for n in networks)
    token = _connection_networks.set(parsed)
    try:
        yield
    finally:
        _connection_networks.reset(token)


def current_connection_networks() -> tuple[Network, ...]:
    """The networks connection_networks() allows here (to carry them into a worker thread)."""
    return _connection_networks.get()


def _allowed_networks() -> tuple[Network, ...]:
    return (*(getattr(settings, "OUTBOUND_ALLOWED_NETWORKS", ()) or ()), *_connection_networks.get())


def refusal_reason(address: str | IPAddress) -> str | None:
    """Why the current settings forbid connecting to ``address``, or None when it is allowed."""
    ip = _parse_ip(address)
    if getattr(settings, "OUTBOUND_ALLOW_PRIVATE_NETWORKS", False):
        return None
    reason = _forbidden_reason(ip)
    if reason is None:
        return None
    if _in_allowed_network(ip):
        return None
    return reason


def _in_allowed_network(ip: IPAddress) -> bool:
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and (wrapped := _embedded_ipv4(ip)) is not None:
        candidates.append(wrapped[1])
    return any(
        c.version == network.version and c in network for network in _allowed_networks() for c in candidates
    )


def plain_http_allowed(url: str) -> bool:
    """Whether credentials may travel over plain http to this URL's host: only to a private target the operator
    allowed (OUTBOUND_ALLOW_PRIVATE_NETWORKS for local fakes, OUTBOUND_ALLOWED_NETWORKS or the connection's
    allowed_networks). Anything on the internet must be https. The host is resolved; a name that does not
    resolve, or resolves to any public address, is not allowed."""
    addresses = _resolved(url)
    return bool(addresses) and all(
        _forbidden_reason(address) is not None
        and (getattr(settings, "OUTBOUND_ALLOW_PRIVATE_NETWORKS", False) or _in_allowed_network(address))
        for address in addresses
    )


def _resolved(url: str) -> list[IPAddress]:
    """The addresses of the URL's host (a literal IP, or DNS); [] when it does not resolve."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return []
    ip = _literal_ip(host)
    if ip is not None:
        return [ip]
    try:
        return [_parse_ip(info[4][0]) for info in socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)]
    except (OSError, UnicodeError, ValueError):
        return []


def is_private_target(url: str) -> bool:
    """Whether the URL's host is, or resolves only to, non-public addresses (no connection is made); a name
    that does not resolve is not."""
    addresses = _resolved(url)
    return bool(addresses) and all(_forbidden_reason(address) is not None for address in addresses)


def credential_url_problem(url: str) -> str | None:
    """Why a URL that carries credentials (an API base URL, a webhook URL) may not be used, or None."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme == "http" and not plain_http_allowed(url):
        return "must be https:// (plain http only to a private address in an allowed network)"
    return None


def _literal_ip(host: str) -> IPAddress | None:
    """The address a host string denotes without DNS, including the legacy forms inet_aton accepts (127.1)."""
    try:
        return _parse_ip(host)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fA-FxX.]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_url(url: str) -> None:
    """Refuse, before any connection, a URL whose scheme, port or literal IP host is forbidden.

    Host names are only resolved at connection time; use this to validate user-entered URLs early.
    Raises a permanent :class:`OutboundError` (kind ``refused`` or ``invalid_url``).
    """
    _preflight(url, mask_url(url), "")


def _preflight(url: str, shown_url: str, method: str) -> None:
    def refuse(why: str, kind: str = "refused") -> OutboundError:
        return OutboundError(f"{method} {shown_url}: {why}".strip(), permanent=True, kind=kind, url=shown_url)

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise refuse(f"invalid URL ({exc})", "invalid_url") from None
    scheme = parts.scheme.lower()
    if scheme not in _ALLOWED_SCHEMES:
        raise refuse(f"scheme {scheme or '(none)'!r} is not allowed, only http and https")
    host = parts.hostname
    if not host:
        raise refuse("URL has no host", "invalid_url")
    if port is not None and port in _BAD_PORTS:
        raise refuse(f"port {port} is not allowed")
    ip = _literal_ip(host)
    if ip is not None and (reason := refusal_reason(ip)):
        raise refuse(f"address {ip} is not allowed ({reason})")


# --------------------------------------------------------------------------------------------- total deadline


class Deadline:
    """A moment by which every request made inside :func:`deadline` must be over, body included.

    Socket timeouts bound each read, not the transfer: a server that sends a byte every few seconds would keep a
    worker for ever. So a watchdog timer shuts down the sockets of the requests in flight when the moment comes;
    the blocked read returns and the request fails as a transient ``timeout``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.until = time.monotonic() + seconds
        self.expired = False
        self._connections: set[Any] = set()
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.until - time.monotonic()

    def watch(self, conn: Any) -> None:
        with self._lock:
            self._connections.add(conn)
            conn._callbridge_deadline = self
            if self.expired:
                self._shut(conn)

    def forget(self, conn: Any) -> None:
        with self._lock:
            self._connections.discard(conn)
            if getattr(conn, "_callbridge_deadline", None) is self:
                conn._callbridge_deadline = None

    def fire(self) -> None:
        with self._lock:
            self.expired = True
            for conn in self._connections:
                self._shut(conn)

    @staticmethod
    def _shut(conn: Any) -> None:
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


_deadline: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "callbridge_deadline", default=None
)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Every request made inside the block (this thread or context) is over within ``seconds`` in all. A
    nested deadline never extends an outer one."""
    outer = _deadline.get()
    limit = seconds if outer is None else min(seconds, outer.remaining())
    current = Deadline(max(0.0, limit))
    timer = threading.Timer(current.seconds, current.fire)
    timer.daemon = True
    timer.start()
    token = _deadline.set(current)
    try:
        yield current
    finally:
        timer.cancel()
        _deadline.reset(token)


def current_deadline() -> Deadline | None:
    """The deadline in force here (to carry it into a worker thread with :func:`deadline`), or None."""
    return _deadline.get()


def _bounded_timeout(timeout: Timeout, method: str, shown: str) -> Timeout:
    """The request's own timeouts, cut to what the current deadline leaves."""
    current = _deadline.get()
    if current is None:
        return timeout
    left = current.remaining()
    if left <= 0 or current.expired:
        raise _deadline_error(current, method, shown)
    if isinstance(timeout, tuple):
        return (min(timeout[0], left), min(timeout[1], left))
    return min(timeout, left)


def _check_deadline(method: str, shown: str) -> None:
    # The time, not only the watchdog's flag: a process frozen past its deadline may wake with the whole body in
    # its socket buffer before the watchdog thread runs.
    current = _deadline.get()
    if current is not None and (current.expired or current.remaining() <= 0):
        raise _deadline_error(current, method, shown)


def _deadline_error(current: Deadline, method: str, shown: str) -> OutboundError:
    return OutboundError(
        f"{method} {shown}: timed out (total deadline of {current.seconds:g} s passed)",
        permanent=False,
        kind="timeout",
        url=shown,
        method=method,
    )


# --------------------------------------------------------------------------------------------- connection layer


class _GuardedConnectionMixin:
    """Resolve, check every address, then connect to a checked address (never resolve twice)."""

    _dns_host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any
    host: str

    def _new_conn(self) -> socket.socket:
        host = self._dns_host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, self.port, allowed_gai_family(), socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        if not infos:
            raise NameResolutionError(self.host, self, socket.gaierror("no addresses"))  # type: ignore[arg-type]
        # Refuse when ANY answer is forbidden: a name that mixes public and private answers is an attack or a
        # misconfiguration, and picking the public one would make the outcome depend on answer order.
        for *_, sockaddr in infos:
            if reason := refusal_reason(sockaddr[0]):
                raise _RefusedTarget(host, str(sockaddr[0]), reason)

        last_error: OSError | None = None
        for family, socktype, proto, _canonname, sockaddr in infos:
            sock = None
            try:
                sock = socket.socket(family, socktype, proto)
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                if isinstance(self.timeout, int | float):
                    sock.settimeout(self.timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)
            except OSError as exc:
                last_error = exc
                if sock is not None:
                    sock.close()
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if isinstance(last_error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from last_error
        raise NewConnectionError(
            self,  # type: ignore[arg-type]
            f"Failed to establish a new connection: {last_error}",
        ) from last_error


class _DeadlineConnectionMixin:
    """Puts each request's connection under the current deadline's watchdog while the request owns it."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        current = _deadline.get()
        if current is not None:
            current.watch(self)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _GuardedHTTPConnection(_DeadlineConnectionMixin, _GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_DeadlineConnectionMixin, _GuardedConnectionMixin, HTTPSConnection):
    pass


class _DeadlinePoolMixin:
    def _put_conn(self, conn: Any) -> None:
        # Back in the pool, the connection is nobody's: a later watchdog must not cut another request's socket.
        owner = getattr(conn, "_callbridge_deadline", None)
        if owner is not None:
            owner.forget(conn)
        super()._put_conn(conn)  # type: ignore[misc]


class _GuardedHTTPConnectionPool(_DeadlinePoolMixin, HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(_DeadlinePoolMixin, HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose pools open sockets only through the SSRF guard.

    ``send`` is deliberately not overridden, so ``responses`` (which patches ``HTTPAdapter.send``) still works.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        # Through a proxy the proxy resolves the target, which would bypass the address check.
        raise ValueError("proxies are not supported by the outbound client")


# --------------------------------------------------------------------------------------------- TLS trust

_ca_lock = threading.Lock()
_ca_cache: dict[tuple[str, int, int], str] = {}
_ca_dir: str | None = None


def _private_ca_dir() -> str:
    """A directory only this process's user can enter, with a random name (mkdtemp: mode 0700). A fixed name
    in the shared temp directory could be created first by another local user, who would then choose which
    certificate authorities the portal trusts."""
    global _ca_dir
    if _ca_dir is None or not os.path.isdir(_ca_dir):
        _ca_dir = tempfile.mkdtemp(prefix="callbridge-ca-")
    return _ca_dir


def tls_verify_value() -> str | bool:
    """``True`` (public CAs), or a bundle of the public CAs plus ``OUTBOUND_CA_BUNDLE``. Never ``False``."""
    extra = getattr(settings, "OUTBOUND_CA_BUNDLE", "") or ""
    if not extra:
        return True
    stat = os.stat(extra)
    key = (os.path.abspath(extra), stat.st_mtime_ns, stat.st_size)
    with _ca_lock:
        cached = _ca_cache.get(key)
        if cached and os.path.exists(cached):
            return cached
        with open(requests.certs.where(), "rb") as public, open(extra, "rb") as own:
            merged = public.read().rstrip(b"\n") + b"\n" + own.read()
        # mkstemp: a new file with a random name, mode 0600, in the private directory.
        fd, path = tempfile.mkstemp(prefix="bundle-", suffix=".pem", dir=_private_ca_dir())
        with os.fdopen(fd, "wb") as out:
            out.write(merged)
        _ca_cache[key] = path
        return path


def _is_certificate_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        if isinstance(current, BaseException):
            pending.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
            pending.extend(a for a in current.args if isinstance(a, BaseException))
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


# --------------------------------------------------------------------------------------------- helpers


@lru_cache(maxsize=1)
def _version() -> str:
    from importlib import metadata

    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version("callbridge")
    import tomllib

    pyproject = os.path.join(getattr(settings, "BASE_DIR", ""), "pyproject.toml")
    with contextlib.suppress(OSError, KeyError, tomllib.TOMLDecodeError), open(pyproject, "rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])
    return "dev"


def user_agent() -> str:
    return f"Callbridge/{_version()} (+{settings.PUBLIC_BASE_URL})"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return max(seconds, 0.0) if seconds == seconds and seconds != float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _status_is_transient(status: int) -> bool:
    return status in _TRANSIENT_STATUSES or 500 <= status <= 599


def _decode(data: bytes, content_type: str) -> str:
    match = re.search(r"charset=([\w.:-]+)", content_type or "", re.I)
    try:
        return data.decode(match.group(1) if match else "utf-8", errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def _content_length(response: requests.Response) -> int | None:
    try:
        value = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


# --------------------------------------------------------------------------------------------- the client


class HttpClient:
    """Thread-safe outbound client; :func:`default_client` returns the shared instance.

    Cookies are never stored (no state leaks from one tenant's request to another's), environment proxies and
    ``.netrc`` are ignored (a proxy would resolve targets itself and bypass the address check), and requests'
    own redirect handling and retries are off (redirects are followed here; retries belong to the outbox).
    """

    def __init__(self, *, user_agent_value: str | None = None) -> None:
        self._user_agent = user_agent_value
        self._adapter = GuardedAdapter()

    @property
    def user_agent(self) -> str:
        return self._user_agent or user_agent()

    def close(self) -> None:
        self._adapter.close()

    # ---------------------------------------------------------------- public API

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        data: Any = None,
        json: Any = None,
        files: Any = None,
        headers: dict[str, str] | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        secrets: Iterable[str] = (),
        stream: bool = False,
        max_bytes: int | None = None,
        allow_redirects: bool = True,
        max_redirects: int = MAX_REDIRECTS,
    ) -> requests.Response:
        """Send one request and return a 2xx response, or raise :class:`OutboundError`.

        ``timeout`` is ``(connect, read)`` seconds or one number for both; it cannot be None. ``secrets`` are
        masked wherever the URL, a message or a body is shown. With ``stream=False`` the body is read now, at
        most ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`); with ``stream=True`` only a ``Content-Length``
        above ``max_bytes`` is refused here and the caller reads the body (prefer :meth:`download`) and must
        close the response. Redirects (301/302/303 become a GET without body, 307/308 keep method and body) are
        followed up to ``max_redirects`` hops, each hop checked like the first; a 3xx that is not followed
        raises a permanent error.
        """
        if timeout is None:
            raise ValueError("an outbound request needs a timeout")
        secrets = tuple(s for s in secrets if s)
        method = method.upper()
        _preflight(url, mask_url(url, secrets), method)
        if secrets and urlsplit(url).scheme.lower() == "http" and not is_private_target(url):
            # Only a private target may be reached over plain http with credentials; whether the settings allow
            # that private address is the connect-time guard's decision (it refuses with its own reason).
            shown = mask_url(url, secrets)
            raise OutboundError(
                f"{method} {shown}: credentials only travel over https to a public address",
                permanent=True,
                kind="refused",
                url=shown,
            )
        all_headers = {
            "User-Agent": self.user_agent,
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
            **(headers or {}),
        }
        try:
            prepared = requests.Request(
                method, url, params=params, data=data, json=json, files=files, headers=all_headers
            ).prepare()
        except (requests.RequestException, ValueError) as exc:
            shown = mask_url(url, secrets)
            raise OutboundError(
                f"{method} {shown}: invalid request ({mask(str(exc), secrets)})",
                permanent=True,
                kind="invalid_url",
                url=shown,
                method=method,
            ) from None

        verify = tls_verify_value()
        hops = 0
        while True:
            shown = mask_url(prepared.url or "", secrets)
            _preflight(prepared.url or "", shown, prepared.method or method)
            response = self._send(prepared, timeout=timeout, verify=verify, shown=shown, secrets=secrets)
            status = response.status_code
            if not (allow_redirects and status in _REDIRECT_STATUSES and response.headers.get("Location")):
                break
            if hops >= max_redirects:
                response.close()
                raise OutboundError(
                    f"{prepared.method} {shown}: more than {max_redirects} redirects",
                    permanent=True,
                    kind="redirect",
                    url=shown,
                    method=prepared.method or method,
                    status=status,
                )
            location = urljoin(prepared.url or "", response.headers["Location"])
            response.close()  # the body of a redirect is never read: it could be arbitrarily large
            refusal = self._redirect_refusal(prepared, status, location)
            if refusal:
                raise OutboundError(
                    f"{prepared.method} {shown}: redirect {status} not followed: {refusal}",
                    permanent=True,
                    kind="redirect",
                    url=shown,
                    method=prepared.method or method,
                    status=status,
                    location=mask_url(location, secrets),
                )
            prepared = self._redirected(prepared, status, location)
            hops += 1

        if not 200 <= status < 300:
            raise self._status_error(response, prepared.method or method, shown, secrets)

        limit = max_bytes if max_bytes is not None else (None if stream else DEFAULT_MAX_BYTES)
        length = _content_length(response)
        if limit is not None and length is not None and length > limit:
            response.close()
            raise self._too_large(prepared.method or method, shown, limit, status)
        if not stream:
            body = self._read(response, limit, prepared.method or method, shown, secrets)
            response._content = body
            response._content_consumed = True
            response.close()
        return response

    def download(
        self,
        url: str,
        dest: IO[bytes],
        *,
        max_bytes: int,
        timeout: Timeout = DEFAULT_TIMEOUT,
        secrets: Iterable[str] = (),
        headers: dict[str, str] | None = None,
        allowed_content_types: Collection[str] | None = None,
        chunk_size: int = 64 * 1024,
    ) -> tuple[str, int]:
        """Stream a GET of ``url`` into ``dest``; return ``(content_type, size)``.

        Refused with a permanent error (kind ``too_large``) as soon as ``Content-Length`` or the bytes received
        exceed ``max_bytes``, and (kind ``content_type``) when ``allowed_content_types`` is given and the media
        type matches none of them (an entry ending in ``/`` such as ``"audio/"`` matches the whole family).
        On any error ``dest`` may hold a partial body: the caller discards it.
        """
        secrets = tuple(s for s in secrets if s)
        response = self.request(
            "GET", url, headers=headers, timeout=timeout, secrets=secrets, stream=True, max_bytes=max_bytes
        )
        shown = mask_url(response.url or url, secrets)
        with contextlib.closing(response):
            content_type = response.headers.get("Content-Type", "")
            if allowed_content_types is not None:
                media = _media_type(content_type)
                if not any(
                    media.startswith(t.lower()) if t.endswith("/") else media == t.lower()
                    for t in allowed_content_types
                ):
                    raise OutboundError(
                        f"GET {shown}: unexpected Content-Type {content_type!r}",
                        permanent=True,
                        kind="content_type",
                        url=shown,
                        method="GET",
                        status=response.status_code,
                    )
            size = 0
            try:
                for chunk in response.iter_content(chunk_size):
                    size += len(chunk)
                    if size > max_bytes:
                        raise self._too_large("GET", shown, max_bytes, response.status_code)
                    dest.write(chunk)
            except requests.RequestException as exc:
                raise self._convert(exc, "GET", shown, secrets) from None
            _check_deadline("GET", shown)
        logger.debug("outbound GET %s downloaded %d bytes (%s)", shown, size, content_type or "no type")
        return content_type, size

    # ---------------------------------------------------------------- internals

    def _send(
        self,
        prepared: requests.PreparedRequest,
        *,
        timeout: Timeout,
        verify: str | bool,
        shown: str,
        secrets: tuple[str, ...],
    ) -> requests.Response:
        method = prepared.method or ""
        started = time.monotonic()
        timeout = _bounded_timeout(timeout, method, shown)
        try:
            # The adapter is called directly (not through a Session) so nothing reads a redirect body, stores
            # cookies or consults environment proxies; `responses` patches exactly this call.
            response = self._adapter.send(prepared, stream=True, timeout=timeout, verify=verify)
        except _RefusedTarget as exc:
            elapsed = (time.monotonic() - started) * 1000
            logger.warning("outbound %s %s refused: %s (%.0f ms)", method, shown, exc, elapsed)
            raise OutboundError(
                f"{method} {shown}: refused, {exc.host} resolves to {exc.address} ({exc.reason})",
                permanent=True,
                kind="refused",
                url=shown,
                method=method,
            ) from None
        except (requests.RequestException, ValueError) as exc:
            error = self._convert(exc, method, shown, secrets)
            elapsed = (time.monotonic() - started) * 1000
            logger.info("outbound %s %s failed: %s (%.0f ms)", method, shown, error.message, elapsed)
            raise error from None
        elapsed = (time.monotonic() - started) * 1000
        logger.info("outbound %s %s -> %s (%.0f ms)", method, shown, response.status_code, elapsed)
        return response

    def _convert(
        self, exc: BaseException, method: str, shown: str, secrets: tuple[str, ...]
    ) -> OutboundError:
        detail = mask(str(exc), secrets)[:300]
        current = _deadline.get()
        if current is not None and (current.expired or current.remaining() <= 0):
            return _deadline_error(current, method, shown)

        def error(what: str, *, permanent: bool, kind: str) -> OutboundError:
            return OutboundError(
                f"{method} {shown}: {what}", permanent=permanent, kind=kind, url=shown, method=method
            )

        if isinstance(exc, requests.exceptions.SSLError):
            if _is_certificate_failure(exc):
                return error(
                    "TLS certificate verification failed; if the server uses a private CA, add it to "
                    f"OUTBOUND_CA_BUNDLE ({detail})",
                    permanent=True,
                    kind="tls",
                )
            return error(f"TLS error ({detail})", permanent=False, kind="tls")
        if isinstance(exc, requests.Timeout):
            return error(f"timed out ({detail})", permanent=False, kind="timeout")
        if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.InvalidHeader | ValueError):
            return error(f"invalid request ({detail})", permanent=True, kind="invalid_url")
        # ConnectionError, ChunkedEncodingError, ContentDecodingError and anything else from requests: the
        # network or the peer misbehaved, which may well be different next time.
        return error(f"connection failed ({detail})", permanent=False, kind="connection")

    def _status_error(
        self, response: requests.Response, method: str, shown: str, secrets: tuple[str, ...]
    ) -> OutboundError:
        status = response.status_code
        try:
            prefix = b""
            for chunk in response.iter_content(1024):
                prefix += chunk
                if len(prefix) > ERROR_BODY_CHARS * 4:  # enough bytes for 2048 characters of any UTF-8
                    break
        except requests.RequestException:
            pass  # the status already tells what happened; a broken error body changes nothing
        finally:
            response.close()
        text = _decode(prefix, response.headers.get("Content-Type", ""))
        body = mask(text, secrets)
        if len(body) > ERROR_BODY_CHARS:
            body = body[:ERROR_BODY_CHARS] + "…"
        if 300 <= status < 400:
            what, permanent = f"redirect {status} not followed", True
        else:
            what, permanent = f"HTTP {status}", not _status_is_transient(status)
        return OutboundError(
            f"{method} {shown}: {what}",
            permanent=permanent,
            kind="redirect" if 300 <= status < 400 else "status",
            url=shown,
            method=method,
            status=status,
            body=body,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            location=urljoin(response.url or "", response.headers.get("Location", ""))
            if 300 <= status < 400 and response.headers.get("Location")
            else "",
        )

    def _read(
        self,
        response: requests.Response,
        limit: int | None,
        method: str,
        shown: str,
        secrets: tuple[str, ...],
    ) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if limit is not None and size > limit:
                    response.close()
                    raise self._too_large(method, shown, limit, response.status_code)
                chunks.append(chunk)
        except requests.RequestException as exc:
            response.close()
            raise self._convert(exc, method, shown, secrets) from None
        _check_deadline(method, shown)  # a body cut short by the watchdog is no body
        return b"".join(chunks)

    @staticmethod
    def _too_large(method: str, shown: str, limit: int, status: int | None) -> OutboundError:
        return OutboundError(
            f"{method} {shown}: response too large (over {limit} bytes)",
            permanent=True,
            kind="too_large",
            url=shown,
            method=method,
            status=status,
        )

    @staticmethod
    def _redirect_refusal(prepared: requests.PreparedRequest, status: int, location: str) -> str | None:
        """Why a redirect must not be followed, or None. A request with a body answered 301/302/303 would be
        re-sent as a body-less GET: counting that as delivered would lose the message, so it is a failure. A
        307/308 to another origin would carry the body (and whatever it holds) to a host we never chose. And a
        step down from https to http would expose what the request carries."""
        method = (prepared.method or "").upper()
        if urlsplit(prepared.url or "").scheme == "https" and urlsplit(location).scheme.lower() == "http":
            return "https to plain http"
        if method not in ("GET", "HEAD") and status in (301, 302, 303):
            return f"a {method} would become a GET without its body"
        if (
            status in (307, 308)
            and method not in ("GET", "HEAD")
            and _origin(location) != _origin(prepared.url or "")
        ):
            return "it would carry the request body to another origin"
        return None

    @staticmethod
    def _redirected(
        prepared: requests.PreparedRequest, status: int, location: str
    ) -> requests.PreparedRequest:
        following = prepared.copy()
        following.prepare_url(location, None)
        if status in (301, 302, 303) and following.method != "HEAD":
            following.method = "GET"
            following.body = None
            for name in ("Content-Length", "Content-Type", "Transfer-Encoding"):
                following.headers.pop(name, None)
        if _origin(following.url or "") != _origin(prepared.url or ""):
            for name in list(following.headers):
                if name.lower() not in _CROSS_ORIGIN_SAFE_HEADERS:
                    del following.headers[name]
        return following


_default_client: HttpClient | None = None
_default_lock = threading.Lock()


def default_client() -> HttpClient:
    """The process-wide client (connection pools are shared; settings are still read per request)."""
    global _default_client
    if _default_client is None:
        with _default_lock:
            if _default_client is None:
                _default_client = HttpClient()
    return _default_client


def request(method: str, url: str, **kwargs: Any) -> requests.Response:
    """:meth:`HttpClient.request` on the shared client."""
    return default_client().request(method, url, **kwargs)


def download(url: str, dest: IO[bytes], **kwargs: Any) -> tuple[str, int]:
    """:meth:`HttpClient.download` on the shared client."""
    return default_client().download(url, dest, **kwargs)


# --------------------------------------------------------------------------------------------- reachability probe


@dataclass(frozen=True)
class Probe:
    """What `probe()` found about a URL without sending it a request: the addresses its name resolves to and,
    for https, the TLS certificate the server presented (verified as every request verifies it)."""

    addresses: tuple[str, ...]
    tls: bool
    certificate_subject: str = ""
    certificate_expires: str = ""


def probe(url: str, *, timeout: float = 5.0) -> Probe:
    """Check a URL as far as can be checked without sending it anything: the URL itself, DNS, and for https a
    TLS handshake with certificate verification (for receivers such as WireCRM whose only endpoint would act on
    any request). Raises a permanent OutboundError naming what failed."""
    import ssl

    shown = mask_url(url)
    _preflight(url, shown, "")
    parts = urlsplit(url)
    host = parts.hostname or ""
    addresses = _resolved(url)
    if not addresses:
        raise OutboundError(f"{shown}: the name {host} does not resolve", permanent=True, kind="connection")
    allowed = [a for a in addresses if refusal_reason(a) is None]
    if not allowed:
        reason = refusal_reason(addresses[0])
        raise OutboundError(
            f"{shown}: address {addresses[0]} is not allowed ({reason})", permanent=True, kind="refused"
        )
    if parts.scheme.lower() != "https":
        return Probe(tuple(str(a) for a in allowed), tls=False)
    verify = tls_verify_value()
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    port = parts.port or 443
    try:
        with (
            socket.create_connection((str(allowed[0]), port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            certificate = tls.getpeercert() or {}
    except ssl.SSLError as exc:
        raise OutboundError(
            f"{shown}: TLS failed ({exc.reason or exc})", permanent=True, kind="tls"
        ) from None
    except OSError as exc:
        raise OutboundError(
            f"{shown}: could not connect ({exc})", permanent=False, kind="connection"
        ) from None
    subject = ", ".join("=".join(pair) for rdn in certificate.get("subject", ()) for pair in rdn)
    return Probe(
        tuple(str(a) for a in allowed),
        tls=True,
        certificate_subject=subject,
        certificate_expires=str(certificate.get("notAfter", "")),
    )
