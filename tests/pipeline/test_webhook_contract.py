from __future__ import annotations

import json

from tests.factories import PbxConnectionFactory
from tests.webhook_security import WebhookSecurityContract


class TestFakePbxWebhookSecurity(WebhookSecurityContract):
    failure_status = 403
    failure_body = {"error": "Invalid token"}

    def make_connection(self, tenant, suffix):
        return PbxConnectionFactory(
            tenant=tenant, provider="fakepbx", settings={}, secrets={"token": f"token-{suffix}-0123456789"}
        )

    def signed_request(self, connection, secrets):
        body = json.dumps({"events": [{"call": "c1", "kind": "ringing", "seq": 1, "ext": "101"}]})
        headers = {"X-Token": secrets["token"]} if secrets else {}
        return {
            "path": f"/hooks/fakepbx/{connection.public_id}/events",
            "data": body,
            "content_type": "application/json",
            "headers": headers,
        }


def test_oversized_webhook_body_is_refused_with_413(client, pbx, settings):
    settings.WEBHOOK_MAX_BODY_BYTES = 100
    response = client.post(
        f"/hooks/fakepbx/{pbx.public_id}/events",
        data=json.dumps({"events": [], "pad": "x" * 200}),
        content_type="application/json",
        HTTP_X_TOKEN="pbx-token-123",
    )
    assert response.status_code == 413
