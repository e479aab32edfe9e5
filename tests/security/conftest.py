from __future__ import annotations

import pytest

from tests.admin_world import FAST_HASHERS, World, build_world


@pytest.fixture
def world(settings, db) -> World:
    """Tenants A and B with an admin each, A's support user, a superuser and an outsider (tests/admin_world)."""
    settings.PASSWORD_HASHERS = FAST_HASHERS
    return build_world()
