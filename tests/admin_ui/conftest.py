from __future__ import annotations

import pytest

from tests.admin_world import FAST_HASHERS, build_world


@pytest.fixture
def world(db, settings):
    settings.PASSWORD_HASHERS = FAST_HASHERS
    return build_world()
