"""Routing answer: GET /api/v5/telephony/manager?phone=…&details=1 → the manager's code and the customer's name."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from calls.routing import resolve
from integrations.http import OutboundError
from integrations.providers.base import RoutingQuery
from tests.retailcrm.conftest import API_KEY, MANAGER_URL, fixture_json

pytestmark = pytest.mark.django_db

CALLER = "+79161234567"


@responses.activate
def test_a_free_responsible_manager_routes_the_call_to_his_code_with_the_customers_name(world):
    responses.add(responses.GET, MANAGER_URL, json=fixture_json("manager_found.json"))

    decision = resolve(world.tenant, CALLER, "+74999999999")

    assert (decision.extension, decision.display_name, decision.source) == ("100", "Maria Sidorova", "retail")
    request = responses.calls[0].request
    assert parse_qs(urlsplit(request.url).query) == {"phone": [CALLER], "details": ["1"]}
    assert request.headers["X-API-KEY"] == API_KEY


@responses.activate
def test_no_manager_is_no_answer_not_an_error(world):
    responses.add(responses.GET, MANAGER_URL, json=fixture_json("manager_not_found.json"))
    assert world.crm.adapter.lookup(RoutingQuery(CALLER, ""), 1.0) is None
    decision = resolve(world.tenant, CALLER)
    assert decision.extension == "" and decision.source == "none"
    assert "failed" not in decision.detail


@responses.activate
def test_a_404_not_found_is_no_answer_too(world):
    responses.add(responses.GET, MANAGER_URL, status=404, json=fixture_json("error_not_found.json"))
    assert world.crm.adapter.lookup(RoutingQuery(CALLER, ""), 1.0) is None


@responses.activate
def test_a_slow_crm_times_out_within_the_budget_and_routing_goes_on_without_it(world, settings):
    settings.ROUTING_BUDGET_MS = 800
    responses.add(responses.GET, MANAGER_URL, body=requests.exceptions.ReadTimeout("no answer in time"))

    with pytest.raises(OutboundError) as caught:
        world.crm.adapter.lookup(RoutingQuery(CALLER, ""), 0.7)
    assert caught.value.transient
    assert responses.calls[0].request.req_kwargs["timeout"] == 0.7  # the routing budget, not a default

    decision = resolve(world.tenant, CALLER)
    assert decision.extension == "" and decision.detail["failed"] == ["retail"]


@responses.activate
def test_the_lookup_touches_no_database(world, django_assert_num_queries):
    responses.add(responses.GET, MANAGER_URL, json=fixture_json("manager_found.json"))
    adapter = world.crm.adapter
    with django_assert_num_queries(0):
        answer = adapter.lookup(RoutingQuery(CALLER, ""), 1.0)
    assert answer.extension == "100"


def test_an_unconfigured_connection_is_not_asked(world):
    world.crm.settings = {}
    assert not world.crm.adapter.answers_routing(RoutingQuery(CALLER, ""))
