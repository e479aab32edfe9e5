"""The `webhook` CRM-side provider: Standard Webhooks messages for a tenant's calls.

The signature is checked by an independent implementation of the specification written here (not the
provider's own `sign`), the retries run through the real outbox, and the provider inherits the shared CRM-side
contracts: the pipeline world of tests/crm_world.py and the webhook-security contract of tests/webhook_security.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import time

import pytest
import responses
from django.core.management import call_command

from api.models import ApiKey
from calls.models import OutboundJob
from integrations.models import CrmConnection
from integrations.providers.base import SchemaError, get_provider
from integrations.providers.webhook import WebhookProvider
from tests.crm_world import CallScript, deliver, play, register_fake_pbx, store_recording, webhook_subscriber
from tests.factories import CrmConnectionFactory, PbxConnectionFactory, TenantFactory
from tests.webhook_security import WebhookSecurityContract

pytestmark = pytest.mark.django_db

URL = "https://hooks.subscriber.example/callbridge"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
TOLERANCE_SECONDS = 5 * 60


class InvalidSignature(Exception):
    pass


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> dict:
    """Standard Webhooks verification, written from the specification: the key is the base64 part after
    "whsec_"; the signed content is "{webhook-id}.{webhook-timestamp}.{body}"; webhook-signature is a
    space-separated list of "v1,<base64 HMAC-SHA256>", any of which may match; the timestamp must be recent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, stamp, signatures = (
            lowered["webhook-id"],
            lowered["webhook-timestamp"],
            lowered["webhook-signature"],
        )
    except KeyError as exc:
        raise InvalidSignature(f"missing header {exc}") from None
    if abs((now or time.time()) - int(stamp)) > TOLERANCE_SECONDS:
        raise InvalidSignature("timestamp outside the tolerance")
    key = base64.b64decode(secret[len("whsec_") :])
    expected = base64.b64encode(
        hmac.new(key, msg_id.encode() + b"." + stamp.encode() + b"." + body, hashlib.sha256).digest()
    )
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return json.loads(body)
    raise InvalidSignature("no signature matches")


@pytest.fixture
def pbx(db, monkeypatch):
    """The crm_world's fake PBX of a Moscow tenant."""
    register_fake_pbx(monkeypatch)
    return PbxConnectionFactory(
        tenant=TenantFactory(slug="acme", time_zone="Europe/Moscow"),
        provider="fakepbx",
        secrets={"token": "t" * 24},
    )


@pytest.fixture
def tenant(pbx):
    return pbx.tenant


def subscriber(tenant, **settings) -> CrmConnection:
    return webhook_subscriber(tenant, URL, SECRET, **settings)


@pytest.fixture
def hooks(tenant):
    return subscriber(tenant)


def received() -> list[tuple[dict[str, str], bytes]]:
    return [(dict(c.request.headers), c.request.body) for c in responses.calls if c.request.url == URL]


def messages() -> list[dict]:
    return [verify(SECRET, headers, body) for headers, body in received()]


def answered_call(pbx, call_id="c1"):
    script = CallScript(call_id)
    return play(
        pbx,
        script.event(0, "ringing", "101"),
        script.event(1, "ringing", "102"),
        script.event(4, "answered", "102"),
        script.event(30, "completed", recorded=True),
    )


# ---- events and their shape -------------------------------------------------------------------------------


@responses.activate
def test_an_answered_call_sends_signed_events_in_order_with_the_calls_api_shape(client, pbx, hooks, tenant):
    responses.add(responses.POST, URL, status=204)
    call = answered_call(pbx)
    deliver(hooks)
    store_recording(call)
    deliver(hooks)

    sent = messages()

    assert [m["type"] for m in sent] == [
        "call.ringing",
        "call.answered",
        "call.completed",
        "call.recording_ready",
    ]
    assert [set(m) for m in sent] == [{"type", "timestamp", "data"}] * 4
    assert [m["timestamp"] for m in sent[:3]] == [
        "2026-11-24T13:00:00+03:00",
        "2026-11-24T13:00:04+03:00",
        "2026-11-24T13:00:30+03:00",
    ]
    # `data` is the call exactly as the read API shows it now.
    key = ApiKey.issue(tenant, "compare")[1]
    api_view = client.get(f"/api/v1/calls/?phone={call.client_phone}", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert sent[-1]["data"] == api_view.json()["results"][0]
    assert sent[-1]["data"]["provider_call_id"] == "c1"
    assert sent[-1]["data"]["recording_url"].endswith(call.recording.token)
    headers = received()[0][0]
    assert headers["Content-Type"] == "application/json"
    assert re.fullmatch(r"msg_[0-9a-f]{32}", headers["webhook-id"])
    assert len({h["webhook-id"] for h, _ in received()}) == 4


@responses.activate
def test_a_transfer_sends_a_second_answered_and_ringing_goes_once(pbx, hooks):
    responses.add(responses.POST, URL, status=200)
    script = CallScript("t1")
    play(
        pbx,
        script.event(0, "ringing", "101"),
        script.event(1, "answered", "101"),
        script.event(20, "ringing", "102"),
        script.event(22, "answered", "102"),
        script.event(50, "completed"),
    )
    deliver(hooks)
    assert [m["type"] for m in messages()] == [
        "call.ringing",
        "call.answered",
        "call.answered",
        "call.completed",
    ]


@responses.activate
def test_only_the_chosen_event_types_are_sent(pbx, tenant):
    responses.add(responses.POST, URL, status=200)
    hooks = subscriber(tenant, events=["call.completed"])
    answered_call(pbx)
    deliver(hooks)
    assert [m["type"] for m in messages()] == ["call.completed"]


@responses.activate
def test_a_missed_call_completes_with_its_result(pbx, hooks):
    responses.add(responses.POST, URL, status=200)
    script = CallScript("m1")
    play(pbx, script.event(0, "ringing", "103"), script.event(25, "completed", outcome="missed"))
    deliver(hooks)
    completed = messages()[-1]
    assert completed["type"] == "call.completed"
    assert completed["data"]["result"] == "missed" and completed["data"]["extension"] == "103"


@responses.activate
def test_a_tampered_body_or_another_secret_fails_verification(pbx, hooks):
    responses.add(responses.POST, URL, status=200)
    answered_call(pbx)
    deliver(hooks)
    headers, body = received()[0]
    verify(SECRET, headers, body)
    with pytest.raises(InvalidSignature):
        verify(SECRET, headers, body.replace(b"c1", b"c2"))
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(InvalidSignature):
        verify(other, headers, body)
    with pytest.raises(InvalidSignature):
        verify(SECRET, headers, body, now=time.time() + 3600)


# ---- retries ----------------------------------------------------------------------------------------------


@responses.activate
def test_failed_attempts_are_retried_with_the_same_id_and_a_fresh_signature(pbx, tenant, settings):
    settings.OUTBOX_TIME_SCALE = 1e-6
    hooks = subscriber(tenant, events=["call.completed"])
    responses.add(responses.POST, URL, status=503)
    responses.add(responses.POST, URL, status=400, body="bad")  # any non-2xx is retried
    responses.add(responses.POST, URL, status=200)
    answered_call(pbx)

    for _ in range(3):
        deliver(hooks)
        time.sleep(0.01)

    attempts = received()
    assert len(attempts) == 3
    assert len({h["webhook-id"] for h, _ in attempts}) == 1  # the receiver's idempotency key
    for headers, body in attempts:
        assert verify(SECRET, headers, body)["type"] == "call.completed"
    job = OutboundJob.objects.get(crm_connection=hooks)
    assert job.status == OutboundJob.SENT and job.attempts == 3
    assert [a.outcome for a in job.attempt_log.all()] == ["transient", "transient", "sent"]


@responses.activate
def test_410_gone_stops_the_message_and_flags_the_connection(pbx, tenant):
    hooks = subscriber(tenant, events=["call.completed"])
    responses.add(responses.POST, URL, status=410)
    answered_call(pbx)
    deliver(hooks)
    job = OutboundJob.objects.get(crm_connection=hooks)
    assert job.status == OutboundJob.FAILED
    hooks.refresh_from_db()
    assert "410" in hooks.last_error


@responses.activate
def test_a_redirect_is_not_followed(pbx, tenant):
    hooks = subscriber(tenant, events=["call.completed"])
    responses.add(responses.POST, URL, status=302, headers={"Location": "https://elsewhere.example/"})
    answered_call(pbx)
    deliver(hooks)
    assert OutboundJob.objects.get(crm_connection=hooks).status == OutboundJob.FAILED
    assert len(responses.calls) == 1


# ---- configuration ---------------------------------------------------------------------------------------


def test_generate_makes_a_standard_webhooks_secret(tenant):
    connection = CrmConnection(
        tenant=tenant,
        key="h",
        provider="webhook",
        settings={},
        secrets={"url": URL, "signing_secret": "generate"},
    )
    connection.clean()
    secret = connection.secrets["signing_secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    connection.save()
    assert connection.regenerate_secret("signing_secret").startswith("whsec_")


def test_the_tenant_file_generates_the_secret_and_exports_it_masked(tenant):
    document = {
        "slug": "subs",
        "name": "Subs",
        "pbx": [],
        "crm": [
            {
                "key": "out",
                "provider": "webhook",
                "settings": {},
                "secrets": {"url": URL, "signing_secret": "generate"},
            }
        ],
        "extensions": [],
        "external_phones": [],
    }
    call_command("import_tenant", "-", stdin=io.StringIO(json.dumps(document)), stdout=io.StringIO())
    stored = CrmConnection.objects.get(key="out").secrets["signing_secret"]
    assert stored.startswith("whsec_")
    out = io.StringIO()
    call_command("export_tenant", "subs", stdout=out)
    exported = json.loads(out.getvalue())["crm"][0]
    assert exported["secrets"] == {"url": "***", "signing_secret": "***"}
    assert exported["settings"] == {}


@pytest.mark.parametrize(
    ("secrets", "field"),
    [
        ({"url": "http://hooks.subscriber.example/x", "signing_secret": SECRET}, "secrets.url"),
        ({"signing_secret": SECRET}, "secrets.url"),
        ({"url": URL, "signing_secret": "not-a-whsec-secret"}, "secrets.signing_secret"),
        ({"url": URL, "signing_secret": "whsec_!!!notbase64"}, "secrets.signing_secret"),
        (
            {"url": URL, "signing_secret": "whsec_" + base64.b64encode(b"short").decode()},
            "secrets.signing_secret",
        ),
        ({"url": URL, "signing_secret": SECRET, "token": "x"}, "secrets.token"),
    ],
)
def test_bad_secrets_are_refused_naming_the_field(secrets, field):
    with pytest.raises(SchemaError) as caught:
        WebhookProvider.clean_secrets(secrets)
    assert caught.value.field == field


def test_bad_events_are_refused():
    with pytest.raises(SchemaError, match=r"call\.hangup"):
        WebhookProvider.clean_settings({"events": ["call.completed", "call.hangup"]})
    with pytest.raises(SchemaError, match="list"):
        WebhookProvider.clean_settings({"events": "call.completed"})
    assert WebhookProvider.clean_settings({}) == {}


@responses.activate
def test_check_connection_sends_a_signed_ping(hooks):
    responses.add(responses.POST, URL, status=200, body="ok")
    result = get_provider(hooks).check_connection()
    assert result.ok and "HTTP 200" in result.summary
    headers, body = received()[0]
    assert verify(SECRET, headers, body) == {
        "type": "ping",
        "timestamp": json.loads(body)["timestamp"],
        "data": {},
    }


@responses.activate
def test_check_connection_reports_a_refusing_receiver(hooks):
    responses.add(responses.POST, URL, status=401, body="who are you")
    result = get_provider(hooks).check_connection()
    assert not result.ok and "401" in result.summary


def test_it_never_answers_routing_questions(hooks):
    from integrations.providers.base import RoutingQuery

    assert not get_provider(hooks).answers_routing(RoutingQuery(caller="+79101234567", did=""))


# ---- the shared inbound contract: this provider accepts nothing -------------------------------------------


class TestWebhookProviderInbound(WebhookSecurityContract):
    failure_status = 403
    failure_body = {"error": "no inbound endpoint"}

    def make_connection(self, tenant, suffix):
        secret = "whsec_" + base64.b64encode(suffix.encode() * 32).decode()
        return CrmConnectionFactory(
            tenant=tenant,
            provider="webhook",
            key="hooks",
            settings={},
            secrets={"url": URL, "signing_secret": secret},
        )

    def signed_request(self, connection, secrets):
        body = json.dumps({"type": "call.completed", "timestamp": "2026-11-24T10:00:00+03:00", "data": {}})
        headers = {}
        if secrets:
            stamp = str(int(time.time()))
            key = base64.b64decode(secrets["signing_secret"][6:] + "==")
            digest = hmac.new(key, f"msg_1.{stamp}.{body}".encode(), hashlib.sha256).digest()
            headers = {
                "webhook-id": "msg_1",
                "webhook-timestamp": stamp,
                "webhook-signature": "v1," + base64.b64encode(digest).decode(),
            }
        return {
            "path": f"/hooks/webhook/{connection.public_id}/",
            "data": body,
            "content_type": "application/json",
            "headers": headers,
        }

    def test_valid_credentials_are_accepted(self, client, connections):
        # This provider only sends: even a request signed with its own secret is refused and stores nothing.
        conn = connections[0]
        self._assert_refused(self.send(client, self.signed_request(conn, conn.secrets)))


@responses.activate
def test_the_verification_snippet_in_docs_webhooks_md_accepts_a_real_message(pbx, hooks):
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "webhooks.md").read_text(encoding="utf-8")
    (snippet,) = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict = {}
    exec(compile(snippet, "docs/webhooks.md", "exec"), namespace)
    responses.add(responses.POST, URL, status=200)
    answered_call(pbx)
    deliver(hooks)
    headers, body = received()[-1]
    assert namespace["verify"](SECRET, headers, body)["type"] == "call.completed"
    with pytest.raises(ValueError):
        namespace["verify"](SECRET, headers, body + b" ")


def test_adding_the_provider_took_one_module_and_its_registry_line():
    """calls/ imports only the provider interface, never a provider module: the webhook provider needed no
    change there."""
    import ast
    from pathlib import Path

    from integrations.providers import base

    assert base.REGISTRY["webhook"] == "integrations.providers.webhook.WebhookProvider"
    assert base.SIDES["webhook"] == base.CRM
    for path in (Path(__file__).resolve().parent.parent / "calls").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [f"{node.module}.{alias.name}" for alias in node.names]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("integrations.providers."):
                    assert name.split(".")[2] == "base", (path, name)
