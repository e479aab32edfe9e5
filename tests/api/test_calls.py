"""GET /api/v1/calls/ and /api/v1/calls/<id>/: fields, offsets, filters, pagination, keys, isolation, throttle."""

from __future__ import annotations

import datetime as dt

import pytest
import responses
from django.utils import timezone

from api.models import ApiKey
from calls.models import Call, OutboundJob, Recording
from tests.crm_world import CallScript, deliver, play
from tests.factories import CrmConnectionFactory

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 11, 24, 7, 0, tzinfo=dt.UTC)  # 10:00 in Moscow
LIST = "/api/v1/calls/"


def answered_call(pbx, call_id="c-answered", start=T0, client="+79101234567", recorded=True) -> Call:
    script = CallScript(call_id, client=client, did="+74951234567", start=start)
    return play(
        pbx,
        script.event(0, "ringing", "101"),
        script.event(1, "ringing", "102"),
        script.event(5, "answered", "102"),
        script.event(65, "completed", recorded=recorded),
    )


def missed_call(pbx, call_id, start, ext="103", client="+79107654321") -> Call:
    script = CallScript(call_id, client=client, start=start)
    return play(pbx, script.event(0, "ringing", ext), script.event(20, "completed", outcome="missed"))


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [c["provider_call_id"] for c in response.json()["results"]]


# ---- fields ---------------------------------------------------------------------------------------------


def test_a_call_has_exactly_the_documented_fields_in_the_tenants_offset(api, pbx):
    call = answered_call(pbx)

    body = api(LIST).json()

    assert body["results"] == [
        {
            "id": call.pk,
            "provider_call_id": "c-answered",
            "direction": "in",
            "result": "answered",
            "client_phone": "+79101234567",
            "external_phone": "+74951234567",
            "extension": "102",
            "extensions": ["101", "102"],
            "started_at": "2026-11-24T10:00:00+03:00",
            "answered_at": "2026-11-24T10:00:05+03:00",
            "ended_at": "2026-11-24T10:01:05+03:00",
            "wait_seconds": call.wait_seconds,
            "talk_seconds": 60,
            "recording_url": f"http://localhost:8000/records/{call.recording.token}",
        }
    ]
    assert call.wait_seconds == 5


def test_another_tenant_sees_its_own_offset(client, other_pbx, other_tenant):
    call = missed_call(other_pbx, "y-1", T0)
    key = ApiKey.issue(other_tenant, "bi")[1]

    body = client.get(f"{LIST}{call.pk}/", HTTP_AUTHORIZATION=f"Bearer {key}").json()

    assert body["started_at"] == "2026-11-24T12:00:00+05:00"
    assert body["result"] == "missed"
    assert body["extension"] == "103"
    assert body["recording_url"] is None


def test_unknown_values_are_null_not_empty_strings(api, pbx, tenant):
    Call.objects.create(tenant=tenant, pbx_connection=pbx, provider_call_id="bare", started_at=T0)

    (call,) = api(LIST).json()["results"]

    assert call["direction"] is None
    assert call["result"] is None
    assert call["client_phone"] is None
    assert call["extension"] is None
    assert call["extensions"] == []
    assert call["answered_at"] is None
    assert call["talk_seconds"] is None


def test_no_recording_link_once_the_recording_is_unavailable_or_purged(api, pbx):
    call = answered_call(pbx)
    for state in (Recording.UNAVAILABLE, Recording.PURGED):
        Recording.objects.filter(call=call).update(state=state)
        assert api(f"{LIST}{call.pk}/").json()["recording_url"] is None
    Recording.objects.filter(call=call).update(state=Recording.STORED)
    assert api(f"{LIST}{call.pk}/").json()["recording_url"].endswith(call.recording.token)


def failing_wirecrm(tenant, url: str):
    """A WireCRM connection whose endpoint answers 500 with a body."""
    responses.add(responses.POST, url, status=500, body="intranet stack trace")
    return CrmConnectionFactory(
        tenant=tenant, provider="wirecrm", key="wire", secrets={"webhook_url": url, "pbx_token": "p" * 24}
    )


@responses.activate
def test_detail_has_events_and_deliveries(api, pbx, tenant, settings):
    crm = failing_wirecrm(tenant, "https://8.8.8.8/calls")
    call = answered_call(pbx)
    deliver(crm, passes=1)

    body = api(f"{LIST}{call.pk}/").json()

    assert body["events"] == [
        {"kind": "ringing", "time": "2026-11-24T10:00:00+03:00", "extension": "101", "leg": None},
        {"kind": "ringing", "time": "2026-11-24T10:00:01+03:00", "extension": "102", "leg": None},
        {"kind": "answered", "time": "2026-11-24T10:00:05+03:00", "extension": "102", "leg": None},
        {"kind": "completed", "time": "2026-11-24T10:01:05+03:00", "extension": None, "leg": None},
    ]
    first = body["deliveries"][0]
    assert set(first) == {"connection", "kind", "status", "attempts", "last_error", "sent_at"}
    assert first == {
        "connection": "wire",
        "kind": "wirecrm.notify_start",
        "status": "pending",
        "attempts": 1,
        "last_error": first["last_error"],
        "sent_at": None,
    }
    assert first["last_error"] == "POST ***: HTTP 500"  # a public target: shown as stored
    # The PBX's own jobs (recording fetch) are not CRM deliveries.
    assert all(d["connection"] == "wire" for d in body["deliveries"])
    assert OutboundJob.objects.filter(call=call, crm_connection__isnull=True).exists()


@responses.activate
def test_errors_of_a_private_target_are_not_shown(api, pbx, tenant, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True
    crm = failing_wirecrm(tenant, "https://10.20.30.40/hook")
    call = answered_call(pbx)
    deliver(crm, passes=1)
    job = OutboundJob.objects.get(call=call, crm_connection=crm, kind="wirecrm.notify_start")
    assert job.last_error == "POST ***: HTTP 500" and job.last_response  # stored in full for operators

    (delivery,) = [d for d in api(f"{LIST}{call.pk}/").json()["deliveries"] if d["attempts"]]

    assert delivery["last_error"] == "HTTP 500 (details hidden: the target is on a private network)"


# ---- filters --------------------------------------------------------------------------------------------


@pytest.fixture
def day_of_calls(pbx):
    answered_call(pbx, "a1", T0)  # 10:00 MSK, ext 101 rang, 102 answered
    missed_call(pbx, "m1", T0 + dt.timedelta(hours=1), ext="103")  # 11:00
    missed_call(pbx, "m2", T0 - dt.timedelta(hours=8), ext="104", client="+79031112233")  # 02:00 MSK
    out = CallScript("o1", direction="out", client="+79035556677", start=T0 + dt.timedelta(hours=2))
    play(pbx, out.event(0, "ringing", "105"), out.event(3, "completed", outcome="busy"))


def test_started_after_and_before_take_iso_8601_with_or_without_offset(api, day_of_calls):
    assert ids(api(LIST, started_after="2026-11-24T10:30:00+03:00")) == ["o1", "m1"]
    # No offset: the tenant's local time.
    assert ids(api(LIST, started_after="2026-11-24T10:30:00")) == ["o1", "m1"]
    assert ids(api(LIST, started_before="2026-11-24T07:00:00Z")) == ["m2"]
    # A "+" left unencoded in a query string arrives as a space; it still means the offset.
    assert ids(api(LIST, started_after="2026-11-24T07:30:00 00:00")) == ["o1", "m1"]
    # A date is the tenant's local midnight: the whole of 24 November in Moscow.
    assert ids(api(LIST, started_after="2026-11-24", started_before="2026-11-25")) == ["o1", "m1", "a1", "m2"]
    assert ids(api(LIST, started_after="2026-11-25")) == []


def test_a_malformed_time_is_a_400_naming_the_parameter(api, day_of_calls):
    response = api(LIST, started_after="yesterday")
    assert response.status_code == 400
    assert "started_after" in response.json()


def test_phone_matches_in_any_written_form(api, day_of_calls):
    for written in (
        "+79031112233",
        "89031112233",
        "8 (903) 111-22-33",
        "79031112233",
        "9031112233",
        "1112233",
    ):
        assert ids(api(LIST, phone=written)) == ["m2"], written
    assert ids(api(LIST, phone="+74951234567")) == ["o1", "m1", "a1", "m2"]  # the DID


def test_extension_matches_any_that_rang_or_answered(api, day_of_calls):
    assert ids(api(LIST, extension="101")) == ["a1"]  # rang, did not answer
    assert ids(api(LIST, extension="102")) == ["a1"]  # answered
    assert ids(api(LIST, extension="105")) == ["o1"]
    assert ids(api(LIST, extension="10")) == []
    assert api(LIST, extension="+7903").status_code == 400


def test_result_and_direction_take_one_or_several_values(api, day_of_calls):
    assert ids(api(LIST, result="missed")) == ["m1", "m2"]
    assert ids(api(f"{LIST}?result=missed&result=busy")) == ["o1", "m1", "m2"]
    assert ids(api(LIST, direction="out")) == ["o1"]
    assert ids(api(LIST, direction="in", result="answered")) == ["a1"]
    assert api(LIST, result="lost").status_code == 400


def test_yesterdays_missed_calls_as_docs_api_md_lists_them(api, pbx):
    today = timezone.now().astimezone(dt.timezone(dt.timedelta(hours=3))).date()
    yesterday_noon = dt.datetime.combine(today - dt.timedelta(days=1), dt.time(12), dt.UTC)
    missed_call(pbx, "yesterday", yesterday_noon - dt.timedelta(hours=3))
    missed_call(pbx, "today", dt.datetime.combine(today, dt.time(9), dt.UTC))
    answered_call(pbx, "answered-yesterday", yesterday_noon - dt.timedelta(hours=4))

    params = {
        "result": "missed",
        "started_after": (today - dt.timedelta(days=1)).isoformat(),
        "started_before": today.isoformat(),
    }
    assert ids(api(LIST, **params)) == ["yesterday"]


# ---- ordering and pagination ------------------------------------------------------------------------------


def test_cursor_pages_walk_every_call_once_in_either_order(api, pbx):
    for n in range(7):
        missed_call(pbx, f"p{n}", T0 + dt.timedelta(minutes=n))
    # Two calls at the same moment: the cursor must neither skip nor repeat either of them.
    missed_call(pbx, "p3-twin", T0 + dt.timedelta(minutes=3))

    def walk(**params):
        seen, url = [], LIST
        response = api(url, page_size=3, **params)
        while True:
            body = response.json()
            seen += [c["provider_call_id"] for c in body["results"]]
            if not body["next"]:
                return seen
            assert "page=" not in body["next"]
            response = api(body["next"].replace("http://testserver", ""))

    newest_first = walk()
    assert len(newest_first) == 8 and set(newest_first) == {*(f"p{n}" for n in range(7)), "p3-twin"}
    assert newest_first[0] == "p6" and newest_first[-1] == "p0"
    oldest_first = walk(ordering="started_at")
    assert oldest_first[0] == "p0" and oldest_first[-1] == "p6"
    assert sorted(oldest_first) == sorted(newest_first)


def test_page_size_is_capped(api, pbx):
    missed_call(pbx, "one", T0)
    body = api(LIST, page_size=100000).json()
    assert body["results"] and "next" in body and "previous" in body


# ---- keys and isolation -----------------------------------------------------------------------------------


def test_another_tenants_call_is_404_and_never_listed(api, pbx, other_pbx):
    mine = missed_call(pbx, "mine", T0)
    theirs = missed_call(other_pbx, "theirs", T0)

    assert api(f"{LIST}{theirs.pk}/").status_code == 404
    assert api(f"{LIST}{mine.pk}/").status_code == 200
    assert ids(api(LIST)) == ["mine"]
    assert ids(api(LIST, phone="+79107654321")) == ["mine"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Bearer wrong-key-0123456789-0123456789",
        "Token {key}",
        "Bearer {key} extra",
        "Basic eDp5",
    ],
)
def test_missing_or_wrong_keys_are_401(client, api_key, pbx, header):
    missed_call(pbx, "c", T0)
    headers = {"HTTP_AUTHORIZATION": header.format(key=api_key)} if header else {}
    response = client.get(LIST, **headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "results" not in response.json()


def test_a_revoked_key_stops_working_at_once(client, tenant, pbx):
    row, key = ApiKey.issue(tenant, "bi")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    assert client.get(LIST, **auth).status_code == 200
    row.revoke()
    assert client.get(LIST, **auth).status_code == 401


def test_a_key_of_an_inactive_tenant_is_refused(api, tenant):
    tenant.active = False
    tenant.save()
    assert api(LIST).status_code == 401


def test_keys_are_stored_hashed_and_last_use_recorded(api, tenant, api_key):
    row = ApiKey.objects.get(tenant=tenant)
    assert api_key not in (row.key_hash, row.hint) and len(row.key_hash) == 64
    assert row.last_used_at is None
    api(LIST)
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_throttled_per_key(client, tenant, pbx, settings):
    settings.API_THROTTLE = "3/min"
    first, second = ApiKey.issue(tenant, "one")[1], ApiKey.issue(tenant, "two")[1]

    statuses = [client.get(LIST, HTTP_AUTHORIZATION=f"Bearer {first}").status_code for _ in range(4)]

    assert statuses == [200, 200, 200, 429]
    throttled = client.get(LIST, HTTP_AUTHORIZATION=f"Bearer {first}")
    assert int(throttled.headers["Retry-After"]) > 0
    # Another key of the same tenant has its own allowance.
    assert client.get(LIST, HTTP_AUTHORIZATION=f"Bearer {second}").status_code == 200


def test_schema_and_swagger_ui_are_served_without_a_cdn(client):
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    docs = client.get("/api/v1/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html
    assert "cdn" not in html.lower() and "unpkg" not in html.lower()
    assert "/static/drf_spectacular_sidecar/" in html


def test_the_private_target_rule(db, tenant, settings):
    from integrations.exposure import shown_error

    public = CrmConnectionFactory(
        tenant=tenant, provider="wirecrm", key="a", secrets={"webhook_url": "https://8.8.8.8/x"}
    )
    private = CrmConnectionFactory(
        tenant=tenant, provider="wirecrm", key="b", secrets={"webhook_url": "https://192.168.1.5/x"}
    )
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    # Without any allowance no private host was ever reached: every error is shown as stored.
    assert shown_error(private, "POST ***: HTTP 500 intranet", 500) == "POST ***: HTTP 500 intranet"
    import ipaddress

    settings.OUTBOUND_ALLOWED_NETWORKS = [ipaddress.ip_network("192.168.1.0/24")]
    assert shown_error(private, "POST ***: HTTP 500 intranet", 500).startswith("HTTP 500 (details hidden")
    assert (
        shown_error(private, "connection refused", None)
        == "details hidden: the target is on a private network"
    )
    assert shown_error(public, "POST ***: HTTP 500", 500) == "POST ***: HTTP 500"
    assert shown_error(private, "", None) == ""
