"""Call history in the admin: scoped to the viewer's tenants, read-only, searchable by phone in any form."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from calls.models import Call, CallEvent, JobAttempt, OutboundJob, Recording, RoutingDecision
from tests.admin_world import FAST_HASHERS, World, build_world, client_for

pytestmark = pytest.mark.django_db

STARTED = dt.datetime(2025, 3, 14, 9, 30, tzinfo=dt.UTC)


@pytest.fixture
def world(settings) -> World:
    settings.PASSWORD_HASHERS = FAST_HASHERS
    return build_world()


def make_call(tenant, pbx, call_id: str, **fields) -> Call:
    defaults = {"direction": Call.IN, "started_at": STARTED, "result": "answered"}
    return Call.objects.create(
        tenant=tenant, pbx_connection=pbx, provider_call_id=call_id, **{**defaults, **fields}
    )


def make_job(call: Call, crm, status: str = OutboundJob.FAILED) -> OutboundJob:
    return OutboundJob.objects.create(
        tenant=call.tenant,
        crm_connection=crm,
        connection_ref=f"crm:{crm.pk}",
        kind="completed",
        call=call,
        dedupe_key=f"{call.provider_call_id}:completed",
        status=status,
        attempts=3,
        next_attempt_at=timezone.now() + dt.timedelta(hours=1),
        last_error="HTTP 401",
    )


@pytest.fixture
def calls(world):
    call_a = make_call(
        world.tenant_a,
        world.pbx_a,
        "rt-session-a1",
        client_phone="+79161234567",
        client_phone_raw="89161234567",
        external_phone="+74951110000",
        rang_extensions=["101", "102"],
        answered_extensions=["102"],
        first_answered_extension="102",
        last_answered_extension="102",
    )
    other_a = make_call(
        world.tenant_a,
        world.pbx_a,
        "rt-session-a2",
        client_phone="+79031112233",
        started_at=STARTED + dt.timedelta(days=3),
        rang_extensions=["1010"],
        result="missed",
    )
    call_b = make_call(world.tenant_b, world.pbx_b, "rt-session-b1", client_phone="+79161234567")
    return call_a, other_a, call_b


def call_url(call: Call) -> str:
    return reverse("admin:calls_call_change", args=[call.pk])


def call_list(client, **params) -> list[Call]:
    response = client.get(reverse("admin:calls_call_changelist"), params)
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


# ---- scoping ----


def test_superuser_sees_every_tenants_calls(world, calls):
    assert set(call_list(client_for(world.superuser))) == set(calls)


@pytest.mark.parametrize("who", ["admin_a", "support_a"])
def test_members_of_a_tenant_see_only_its_calls(world, calls, who):
    call_a, other_a, _ = calls
    assert set(call_list(client_for(getattr(world, who)))) == {call_a, other_a}


@pytest.mark.parametrize("who", ["admin_a", "support_a", "outsider"])
def test_another_tenants_call_answers_404(world, calls, who):
    call_b = calls[2]
    client = client_for(getattr(world, who))
    assert client.get(call_url(call_b)).status_code == 404
    job = make_job(call_b, world.crm_b)
    assert client.get(reverse("admin:calls_outboundjob_change", args=[job.pk])).status_code == 404


def test_outsider_staff_cannot_list_calls(world, calls):
    assert client_for(world.outsider).get(reverse("admin:calls_call_changelist")).status_code == 403


def test_tenant_filter_offers_only_the_viewers_tenants(world, calls):
    response = client_for(world.support_a).get(reverse("admin:calls_call_changelist"))
    assert "Beta Ltd" not in response.content.decode()


# ---- the call page ----


def test_call_page_shows_timeline_routing_jobs_and_recording(world, calls):
    call_a = calls[0]
    CallEvent.objects.create(
        call=call_a,
        pbx_connection=world.pbx_a,
        dedupe_key="a1:new",
        order_key="0001",
        kind="ringing",
        occurred_at=STARTED,
        normalised={"kind": "ringing", "extension": "101"},
    )
    CallEvent.objects.create(
        call=call_a,
        pbx_connection=world.pbx_a,
        dedupe_key="a1:answered",
        order_key="0002",
        kind="answered",
        leg_id="leg-7",
        occurred_at=STARTED,
    )
    RoutingDecision.objects.create(
        tenant=world.tenant_a, call=call_a, caller="+79161234567", extension="102", source="planfix"
    )
    job = make_job(call_a, world.crm_a)
    JobAttempt.objects.create(job=job, outcome=JobAttempt.PERMANENT, status_code=401, error="HTTP 401")
    recording = Recording.objects.create(call=call_a, state=Recording.STORED)

    page = client_for(world.support_a).get(call_url(call_a)).content.decode()
    assert page.index("0001") < page.index("0002") and "leg-7" in page
    assert "planfix" in page
    assert "completed" in page and reverse("admin:calls_outboundjob_change", args=[job.pk]) in page
    assert recording.public_url in page

    job_page = client_for(world.support_a).get(reverse("admin:calls_outboundjob_change", args=[job.pk]))
    assert "HTTP 401" in job_page.content.decode()
    assert list(job_page.context["inline_admin_formsets"][0].formset.queryset) == list(job.attempt_log.all())


@pytest.mark.parametrize("who", ["support_a", "admin_a", "superuser"])
def test_call_page_is_read_only_for_everyone(world, calls, who):
    call_a = calls[0]
    client = client_for(getattr(world, who))
    response = client.get(call_url(call_a))
    assert response.status_code == 200 and not response.context["has_change_permission"]
    assert client.post(call_url(call_a), {"result": "missed"}).status_code == 403
    call_a.refresh_from_db()
    assert call_a.result == "answered"


# ---- search and filters ----


@pytest.mark.parametrize("term", ["8 (916) 123-45-67", "+7 916 123-45-67", "79161234567", "9161234567"])
def test_search_finds_a_number_written_in_any_form(world, calls, term):
    assert call_list(client_for(world.support_a), q=term) == [calls[0]]


def test_search_finds_by_extension_that_rang_or_answered(world, calls):
    client = client_for(world.support_a)
    assert call_list(client, q="101") == [calls[0]]  # rang; "1010" of the other call is not "101"
    assert call_list(client, q="102") == [calls[0]]  # answered
    assert call_list(client, q="1010") == [calls[1]]


def test_search_finds_by_provider_call_id(world, calls):
    assert call_list(client_for(world.support_a), q="rt-session-a2") == [calls[1]]


def test_search_never_reaches_another_tenant(world, calls):
    assert call_list(client_for(world.support_a), q="rt-session-b1") == []


def test_date_range_filter(world, calls):
    client = client_for(world.support_a)
    assert call_list(client, started_from="2025-03-15") == [calls[1]]
    assert call_list(client, started_to="2025-03-14") == [calls[0]]
    assert set(call_list(client, started_from="2025-03-14", started_to="2025-03-17")) == set(calls[:2])


def test_extension_filter(world, calls):
    assert call_list(client_for(world.support_a), extension="102") == [calls[0]]


def test_filters_combine_with_search(world, calls):
    assert call_list(client_for(world.support_a), q="+79161234567", result="missed") == []


# ---- actions ----


def post_action(client, model: str, action: str, objects) -> object:
    return client.post(
        reverse(f"admin:calls_{model}_changelist"),
        {"action": action, "_selected_action": [str(o.pk) for o in objects], "index": "0"},
        follow=True,
    )


def make_fetch_job(call: Call, status: str) -> OutboundJob:
    """A recording fetch: a kind the pipeline itself declares, whatever the CRM adapters declare."""
    return OutboundJob.objects.create(
        tenant=call.tenant,
        pbx_connection=call.pbx_connection,
        connection_ref=f"pbx:{call.pbx_connection_id}",
        kind="recording.fetch",
        call=call,
        dedupe_key=f"{call.provider_call_id}:fetch",
        status=status,
        attempts=12,
        next_attempt_at=timezone.now() + dt.timedelta(hours=1),
    )


def test_retry_now_puts_a_failed_job_back_in_the_queue(world, calls):
    job = make_fetch_job(calls[0], status=OutboundJob.DEAD)
    sent = make_fetch_job(calls[1], status=OutboundJob.SENT)
    response = post_action(client_for(world.admin_a), "outboundjob", "retry_now", [job, sent])
    assert response.status_code == 200
    job.refresh_from_db()
    sent.refresh_from_db()
    assert job.status == OutboundJob.PENDING and job.next_attempt_at <= timezone.now()
    assert sent.status == OutboundJob.SENT
    assert any("1 job(s) queued" in text for text in messages_of(response))


def test_retry_now_leaves_tenants_the_user_only_reads_alone(world, calls):
    job = make_fetch_job(calls[0], status=OutboundJob.DEAD)
    world.admin_b.tenant_memberships.create(tenant=world.tenant_a, role="support")
    post_action(client_for(world.admin_b), "outboundjob", "retry_now", [job])
    job.refresh_from_db()
    assert job.status == OutboundJob.DEAD


def test_support_cannot_retry(world, calls):
    job = make_fetch_job(calls[0], status=OutboundJob.FAILED)
    client = client_for(world.support_a)
    response = client.get(reverse("admin:calls_outboundjob_changelist"))
    assert "retry_now" not in response.content.decode()
    post_action(client, "outboundjob", "retry_now", [job])
    job.refresh_from_db()
    assert job.status == OutboundJob.FAILED


def test_resend_to_crm_is_offered_to_tenant_admins_only(world, calls):
    admin_page = client_for(world.admin_a).get(reverse("admin:calls_call_changelist")).content.decode()
    support_page = client_for(world.support_a).get(reverse("admin:calls_call_changelist")).content.decode()
    assert "resend_to_crm" in admin_page
    assert "resend_to_crm" not in support_page


def test_resend_to_crm_acts_on_the_selected_calls(world, calls):
    response = post_action(client_for(world.admin_a), "call", "resend_to_crm", [calls[0]])
    assert any("for 1 call(s)" in text for text in messages_of(response))


def test_superuser_may_delete_a_tenant_with_its_call_history(world, calls):
    client = client_for(world.superuser)
    delete = reverse("admin:integrations_tenant_delete", args=[world.tenant_b.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 302
    assert not Call.objects.filter(tenant_id=world.tenant_b.pk).exists()


def test_stored_recording_has_a_player_and_unstored_one_can_be_fetched_again(world, calls):
    stored = Recording.objects.create(
        call=calls[0], state=Recording.STORED, content_type="audio/mpeg", size=10
    )
    page = client_for(world.support_a).get(call_url(calls[0])).content.decode()
    assert f'<audio controls preload="none" src="{stored.public_url}"' in page
    waiting = Recording.objects.create(call=calls[1], state=Recording.UNAVAILABLE, reason="HTTP 404")
    response = post_action(client_for(world.admin_a), "call", "fetch_recording_again", [calls[0], calls[1]])
    assert any("1 recording fetch(es) queued" in text for text in messages_of(response))
    waiting.refresh_from_db()
    assert waiting.state == Recording.EXPECTED
    assert OutboundJob.objects.filter(
        kind="recording.fetch", call=calls[1], status=OutboundJob.PENDING
    ).exists()


def test_support_cannot_fetch_recordings_again(world, calls):
    Recording.objects.create(call=calls[1], state=Recording.UNAVAILABLE)
    post_action(client_for(world.support_a), "call", "fetch_recording_again", [calls[1]])
    assert not OutboundJob.objects.filter(kind="recording.fetch").exists()
