"""Admin login lockout (issue 15 item 3, django-axes): five failed logins for one account from one address
lock that pair for 15 minutes, even with the right password; other addresses and other accounts are not locked;
the lockout ends after the cool-off or with `manage.py axes_reset_username`."""

from __future__ import annotations

import datetime as dt

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "pw-Secret-123"


@pytest.fixture
def staff():
    return UserFactory(username="ivan", is_staff=True)


def login(client, username: str, password: str, address: str = "203.0.113.7"):
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": password},
        REMOTE_ADDR=address,
    )


def logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def fail_five_times(client, username: str = "ivan", address: str = "203.0.113.7") -> None:
    for _ in range(5):
        response = login(client, username, "wrong-password", address)
        assert not logged_in(response)


def test_five_failures_lock_the_account_and_address_pair_even_with_the_right_password(client, staff):
    fail_five_times(client)

    response = login(client, "ivan", PASSWORD)

    assert not logged_in(response)
    assert response.status_code == 429


def test_four_failures_do_not_lock(client, staff):
    for _ in range(4):
        login(client, "ivan", "wrong-password")

    assert logged_in(login(client, "ivan", PASSWORD))


def test_another_address_and_another_account_are_not_locked(client, staff):
    UserFactory(username="olga", is_staff=True)
    fail_five_times(client)

    assert logged_in(login(client, "ivan", PASSWORD, address="198.51.100.9"))
    client.logout()
    assert logged_in(login(client, "olga", PASSWORD))


def test_the_lock_ends_after_fifteen_minutes(client, staff):
    fail_five_times(client)
    AccessAttempt.objects.update(attempt_time=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=16))

    assert logged_in(login(client, "ivan", PASSWORD))


def test_an_operator_unlocks_with_axes_reset_username(client, staff):
    fail_five_times(client)

    call_command("axes_reset_username", "ivan")

    assert logged_in(login(client, "ivan", PASSWORD))
