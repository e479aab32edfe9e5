"""Structured logs: with LOG_FORMAT=json each line is one JSON object with time, level, logger, message and the
tenant, call, job and connection ids known where it was logged, in web requests and worker tasks alike; no
secret ever reaches a line."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest
import responses

from calls import outbox
from calls.models import OutboundJob
from calls.tasks import send_jobs
from portal import logs
from tests.crm_world import WEBHOOK_SECRET, CallScript, play, register_fake_pbx, webhook_subscriber
from tests.factories import PbxConnectionFactory, TenantFactory
from tests.isolated import run_django

HOOK = "https://hooks.subscriber.example/secret-path-0123456789"
SECRET = WEBHOOK_SECRET


@pytest.fixture
def json_lines():
    """Every log line of the test, formatted exactly as LOG_FORMAT=json formats them (handler, filter and
    formatter from portal.logs, on the root logger)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logs.clear()
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        logs.clear()


@pytest.fixture
def world(db, monkeypatch):
    register_fake_pbx(monkeypatch)
    tenant = TenantFactory()
    pbx = PbxConnectionFactory(tenant=tenant, provider="fakepbx", secrets={"token": "pbx-token-0123456789"})
    hooks = webhook_subscriber(tenant, HOOK)
    return tenant, pbx, hooks


def test_a_line_is_one_json_object_with_the_fields(json_lines):
    with logs.context(tenant=3, call=7):
        logging.getLogger("callbridge.test").warning("hello %s", "world")
    logging.getLogger("callbridge.test").info("outside")

    first, second = json_lines()
    assert set(first) == {"time", "level", "logger", "message", "tenant", "call"}
    assert first["level"] == "WARNING" and first["logger"] == "callbridge.test"
    assert first["message"] == "hello world" and (first["tenant"], first["call"]) == (3, 7)
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert set(second) == {"time", "level", "logger", "message"}


def test_exceptions_are_one_line_too(json_lines):
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("callbridge.test").exception("failed")
    (line,) = json_lines()
    assert "ValueError: boom" in line["exception"]


def test_a_webhook_requests_lines_carry_tenant_connection_and_call(client, world, json_lines):
    tenant, pbx, _hooks = world
    body = json.dumps({"events": [{"call": "c-log", "kind": "ringing", "seq": 1, "ext": "101"}]})
    response = client.post(
        f"/hooks/fakepbx/{pbx.public_id}/events", body, content_type="application/json", HTTP_X_TOKEN="wrong"
    )
    assert response.status_code == 403
    (refused,) = [line for line in json_lines() if line["logger"] == "callbridge.hooks"]
    assert refused["tenant"] == tenant.pk and refused["connection"] == f"pbx:{pbx.pk}"

    with logs.context():
        call = play(pbx, CallScript("c-log").event(0, "ringing", "101"))
        logging.getLogger("callbridge.test").info("after ingest")
    assert json_lines()[-1]["call"] == call.pk


def test_the_next_request_on_the_thread_starts_without_the_previous_ids(client, world, json_lines):
    _tenant, pbx, _hooks = world
    client.post(f"/hooks/fakepbx/{pbx.public_id}/events", "{}", content_type="application/json")
    client.post("/hooks/fakepbx/no-such-connection-0000000/events", "{}", content_type="application/json")
    last = json_lines()[-1]
    assert "tenant" not in last and "connection" not in last


@responses.activate
def test_a_worker_tasks_lines_carry_job_connection_tenant_and_call(world, json_lines, settings):
    tenant, pbx, hooks = world
    responses.add(responses.POST, HOOK, status=500, body=f"echo of {SECRET}")
    call = play(pbx, CallScript("c-job").event(0, "ringing", "101"))
    job = OutboundJob.objects.get(crm_connection=hooks)
    owner = uuid.uuid4().hex
    assert outbox.claim([job.pk], owner, job.next_attempt_at)

    send_jobs.apply(args=[owner, [job.pk]])  # through Celery's task machinery and its signals

    (line,) = [line for line in json_lines() if line["logger"] == "callbridge.outbox"]
    assert line["level"] == "WARNING"
    assert (line["job"], line["call"], line["tenant"], line["connection"]) == (
        job.pk,
        call.pk,
        tenant.pk,
        f"crm:{hooks.pk}",
    )
    assert logs.current() == {}  # the task's ids end with the task


@responses.activate
def test_no_secret_reaches_a_line(client, world, json_lines, settings):
    tenant, pbx, hooks = world
    responses.add(responses.POST, HOOK, status=500, body=f"echo of {SECRET} and {HOOK}")
    play(pbx, CallScript("c-secret").event(0, "ringing", "101"))
    job = OutboundJob.objects.get(crm_connection=hooks)
    owner = uuid.uuid4().hex
    outbox.claim([job.pk], owner, job.next_attempt_at)
    send_jobs.apply(args=[owner, [job.pk]])
    from api.models import ApiKey

    key = ApiKey.issue(tenant, "r")[1]
    client.get("/api/v1/calls/", HTTP_AUTHORIZATION=f"Bearer {key}x")
    client.post(
        f"/hooks/fakepbx/{pbx.public_id}/events",
        "{}",
        content_type="application/json",
        HTTP_X_TOKEN="pbx-token-0123456789",
    )
    # Whatever a careless message might still contain is scrubbed by the formatter itself.
    logging.getLogger("callbridge.test").warning(
        "careless: Authorization: Bearer %s, %s, GET /x?api_key=%s&page=2", key, SECRET, "rc-TOPSECRET-42"
    )

    text = "\n".join(json.dumps(line) for line in json_lines())
    for secret in (
        SECRET,
        SECRET.removeprefix("whsec_"),
        HOOK,
        "secret-path-0123456789",
        key,
        "pbx-token-0123456789",
        "rc-TOPSECRET-42",
    ):
        assert secret not in text, secret
    assert "page=2" in text and "Bearer ***" in text


def test_log_format_is_checked_and_json_reaches_the_console(tmp_path):
    refused = run_django("", tmp_path, DEBUG="true", LOG_FORMAT="xml")
    assert refused.returncode != 0 and "LOG_FORMAT" in refused.stderr

    code = (
        "import logging\n"
        "from portal import logs\n"
        "logs.configure_worker_logging()  # what a Celery worker runs at start\n"
        "with logs.context(job=5, tenant=2):\n"
        "    logging.getLogger('callbridge.outbox').warning('job 5 failed')\n"
    )
    result = run_django(code, tmp_path, DEBUG="true", LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(text) for text in result.stderr.splitlines() if text.startswith("{")]
    assert line["message"] == "job 5 failed" and (line["job"], line["tenant"]) == (5, 2)

    text = run_django("import logging\nlogging.getLogger('x').warning('plain')", tmp_path, DEBUG="true")
    assert "WARNING x plain" in text.stderr
