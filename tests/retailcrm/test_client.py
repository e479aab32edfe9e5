"""The RetailCRM client: key header, form encoding, the error envelope's verdicts, and the shared rate limiter."""

from __future__ import annotations

import time

import pytest
import requests
import responses

from integrations.http import OutboundError
from integrations.providers.retailcrm.api import (
    GENERAL_RPS,
    TELEPHONY_RPS,
    RateLimited,
    RateLimiter,
    RetailCrmClient,
    RetailCrmError,
)
from tests.retailcrm.conftest import ACCOUNT, API_KEY, EVENT_URL, fixture_json, fixture_text, form_field

pytestmark = pytest.mark.django_db

EVENT = fixture_json("call_event_seed.json")


def client() -> RetailCrmClient:
    return RetailCrmClient(ACCOUNT, API_KEY)


@responses.activate
def test_a_post_carries_the_key_header_and_its_document_as_one_json_form_field():
    responses.add(responses.POST, EVENT_URL, json=fixture_json("call_event_ok.json"))

    assert client().call_event(EVENT) == {"success": True}

    request = responses.calls[0].request
    assert request.headers["X-API-KEY"] == API_KEY
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form_field(request, "event") == EVENT
    assert "apiKey" not in request.url


def refusal(status: int, body: str, content_type: str = "application/json") -> RetailCrmError:
    responses.add(responses.POST, EVENT_URL, status=status, body=body, content_type=content_type)
    with pytest.raises(RetailCrmError) as caught:
        client().call_event(EVENT)
    return caught.value


@responses.activate
@pytest.mark.parametrize(
    ("status", "fixture"),
    [
        (403, "error_wrong_api_key.json"),
        (403, "error_api_key_missing.json"),
        (403, "error_access_denied.json"),
        (400, "error_account_missing.json"),
        (200, "error_wrong_api_key.json"),  # success:false in a 200 is judged by its message
    ],
)
def test_errors_about_the_key_or_the_account_are_permanent_and_flag_the_connection(status, fixture):
    error = refusal(status, fixture_text(fixture))
    assert error.permanent and error.flag_connection
    assert error.error_msg == fixture_json(fixture)["errorMsg"]
    assert error.error_msg in str(error)


@responses.activate
def test_a_missing_account_answering_html_is_permanent_and_flags_the_connection():
    error = refusal(405, fixture_text("account_missing.html"), "text/html")
    assert error.permanent and error.flag_connection and "HTML" in str(error)


@responses.activate
@pytest.mark.parametrize("fixture", ["error_parameter_missing.json", "calls_upload_validation_indexed.json"])
def test_validation_errors_are_permanent_but_do_not_flag_the_connection(fixture):
    error = refusal(400, fixture_text(fixture))
    assert error.permanent and error.validation and not error.flag_connection


@responses.activate
def test_validation_details_come_as_a_map_or_as_a_list():
    as_map = refusal(400, fixture_text("calls_upload_validation_indexed.json"))
    assert as_map.errors == {"calls[1].date": "This value is not a valid datetime."}
    assert "calls[1].date: This value is not a valid datetime." in str(as_map)
    as_list = refusal(400, fixture_text("calls_upload_validation_list.json"))
    assert as_list.errors == ["Phone is not valid"] and "Phone is not valid" in str(as_list)


@responses.activate
@pytest.mark.parametrize("status", [503, 429])
def test_rate_limit_answers_are_transient_and_wait_at_least_a_second(status):
    error = refusal(status, '{"success": false}')
    assert not error.permanent and error.retry_after >= 1


@responses.activate
def test_a_retry_after_longer_than_a_second_is_kept():
    responses.add(responses.POST, EVENT_URL, status=503, body="", headers={"Retry-After": "7"})
    with pytest.raises(RetailCrmError) as caught:
        client().call_event(EVENT)
    assert caught.value.retry_after == 7


@responses.activate
@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_are_transient(status):
    error = refusal(status, "oops", "text/plain")
    assert not error.permanent and not error.flag_connection


@responses.activate
def test_not_found_is_permanent():
    error = refusal(404, fixture_text("error_not_found.json"))
    assert error.permanent and error.status == 404 and not error.flag_connection


@responses.activate
def test_a_timeout_is_transient():
    responses.add(responses.POST, EVENT_URL, body=requests.exceptions.ReadTimeout("slow"))
    with pytest.raises(OutboundError) as caught:
        client().call_event(EVENT)
    assert caught.value.transient and caught.value.kind == "timeout"


def test_a_forbidden_account_url_is_permanent_and_flags_the_connection():
    with pytest.raises(RetailCrmError) as caught:
        RetailCrmClient("http://127.0.0.1:8080", API_KEY).call_event(EVENT)
    assert caught.value.permanent and caught.value.flag_connection


def test_uploads_over_50_calls_are_refused_before_sending():
    with pytest.raises(ValueError, match="at most 50"):
        client().upload_calls([{"externalId": str(n)} for n in range(51)])


# ---- the shared rate limiter ----


def test_the_limiter_refuses_past_its_limit_with_a_transient_error_and_retry_after():
    first, second = (
        RateLimiter("key", "telephony", 2, max_wait=0),
        RateLimiter("key", "telephony", 2, max_wait=0),
    )
    first.acquire()
    second.acquire()  # another process of the same key: the seats are shared
    with pytest.raises(RateLimited) as caught:
        first.acquire()
    assert not caught.value.permanent and caught.value.retry_after == 1.0


def test_a_released_seat_stays_counted_for_the_window_after_the_answer():
    limiter = RateLimiter("key", "general", 1, max_wait=0)
    limiter.release(limiter.acquire())
    with pytest.raises(RateLimited):
        limiter.acquire()


def test_a_seat_past_its_release_is_taken_by_exactly_one_of_two_racing_workers():
    from django.core.cache import cache

    first, second = RateLimiter("key", "general", 1, max_wait=0), RateLimiter("key", "general", 1, max_wait=0)
    cache.set(f"{first.prefix}:0", ("done", time.time() - 0.5), 10)
    first.acquire()
    with pytest.raises(RateLimited):
        second.acquire()


def test_each_api_key_and_bucket_has_its_own_seats():
    RateLimiter("key-a", "general", 1, max_wait=0).acquire()
    RateLimiter("key-b", "general", 1, max_wait=0).acquire()
    RateLimiter("key-a", "telephony", 1, max_wait=0).acquire()


def test_telephony_routes_get_40_per_second_and_the_others_10():
    rc = client()
    assert rc.limiter_for("/api/v5/telephony/calls/upload").limit == TELEPHONY_RPS == 40
    assert rc.limiter_for("/api/v5/integration-modules/x/edit").limit == GENERAL_RPS == 10
    assert API_KEY not in rc.limiter_for("/api/v5/users").prefix
