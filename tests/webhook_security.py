"""The webhook-security contract every provider's inbound tests inherit.

A provider's test class sets `failure_status` and `failure_body` (its documented answer to bad credentials),
and implements `make_connection(tenant, suffix)` and `signed_request(connection, secrets)`: the request a
provider would send, signed or authenticated with `secrets` (a dict shaped like the connection's secrets), or
carrying no credentials at all when `secrets` is None. The contract then proves that missing credentials,
wrong credentials of equal and of different length, and another connection's credentials are refused with
the provider's own status and body and store nothing, and that an unknown public id answers 404.
"""

from __future__ import annotations

import secrets as pysecrets
from typing import Any

import pytest

from calls.models import CallEvent, OriginateRequest, OutboundJob, RoutingDecision
from tests.factories import TenantFactory


def _same_length_other(value: str) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    other = "".join(pysecrets.choice(alphabet) for _ in value)
    return other if other != value else _same_length_other(value)


def _nothing_stored() -> bool:
    return not (
        CallEvent.objects.exists()
        or OutboundJob.objects.exists()
        or OriginateRequest.objects.exists()
        or RoutingDecision.objects.exists()
    )


@pytest.mark.django_db
class WebhookSecurityContract:
    failure_status: int = 403
    failure_body: Any = None  # the exact JSON body, or None to only require a JSON body
    credential_keys: tuple[str, ...] = ()  # the secrets that authenticate inbound requests

    def make_connection(self, tenant: Any, suffix: str) -> Any:
        raise NotImplementedError

    def signed_request(self, connection: Any, secrets: dict[str, str] | None) -> dict[str, Any]:
        """{"path": ..., "data": ..., "content_type": ..., "headers": {...}, "method": "post"}"""
        raise NotImplementedError

    def send(self, client: Any, request: dict[str, Any], path: str | None = None) -> Any:
        method = getattr(client, request.get("method", "post"))
        headers = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in request.get("headers", {}).items()}
        kwargs: dict[str, Any] = {}
        if request.get("method", "post") != "get":
            kwargs["content_type"] = request.get("content_type", "application/x-www-form-urlencoded")
        return method(path or request["path"], request.get("data", ""), **kwargs, **headers)

    def _assert_refused(self, response: Any) -> None:
        assert response.status_code == self.failure_status, response.content
        if self.failure_body is not None:
            assert response.json() == self.failure_body
        else:
            response.json()
        assert _nothing_stored()

    @pytest.fixture
    def connections(self, db):
        return self.make_connection(TenantFactory(), "a"), self.make_connection(TenantFactory(), "b")

    def _credentials(self, connection: Any) -> dict[str, str]:
        keys = self.credential_keys or tuple(connection.secrets)
        return {k: v for k, v in connection.secrets.items() if k in keys}

    def test_missing_credentials_are_refused(self, client, connections):
        self._assert_refused(self.send(client, self.signed_request(connections[0], None)))

    def test_wrong_credentials_of_equal_length_are_refused(self, client, connections):
        conn = connections[0]
        wrong = {k: _same_length_other(v) for k, v in self._credentials(conn).items()}
        self._assert_refused(self.send(client, self.signed_request(conn, {**conn.secrets, **wrong})))

    def test_wrong_credentials_of_other_length_are_refused(self, client, connections):
        conn = connections[0]
        wrong = {k: v + "x" for k, v in self._credentials(conn).items()}
        self._assert_refused(self.send(client, self.signed_request(conn, {**conn.secrets, **wrong})))

    def test_another_connections_credentials_are_refused(self, client, connections):
        mine, other = connections
        request = self.signed_request(other, other.secrets)
        path = request["path"].replace(other.public_id, mine.public_id)
        self._assert_refused(self.send(client, request, path))

    def test_unknown_public_id_answers_404(self, client, connections):
        conn = connections[0]
        request = self.signed_request(conn, conn.secrets)
        response = self.send(
            client, request, request["path"].replace(conn.public_id, "unknown-public-id-000")
        )
        assert response.status_code == 404
        assert _nothing_stored()

    def test_valid_credentials_are_accepted(self, client, connections):
        conn = connections[0]
        response = self.send(client, self.signed_request(conn, conn.secrets))
        assert response.status_code == 200, response.content
