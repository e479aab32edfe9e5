"""Unauthenticated probes cost little (issue 15 item 4): a flood of /readyz requests costs at most one service
check per second per process. The memoised /readyz is issue 14's; this is its contract, measured from the
outside: the broker's and the cache's own counters on a private Redis, from a fresh process."""

from __future__ import annotations

import json

import pytest
import redis

from tests.isolated import run_django

FLOOD = """
import json, time
from django.test import Client
client = Client()
started = time.monotonic()
statuses = [client.get("/readyz").status_code for _ in range(50)]
print(json.dumps({"seconds": time.monotonic() - started, "statuses": sorted(set(statuses))}))
"""


@pytest.fixture
def flood_redis():
    """A private redis-server, stopped by its PID afterwards. The helper lives in tests/pipeline/test_worker.py
    on main and moves to tests/private_redis.py with issue 14; either is used."""
    try:
        from tests.private_redis import PrivateRedis
    except ImportError:
        from tests.pipeline.test_worker import PrivateRedis
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def _counters(url: str) -> tuple[int, int]:
    """(connections opened, SET commands) so far, by the Redis server itself."""
    server = redis.Redis.from_url(url)
    stats = server.info("stats")
    commands = server.info("commandstats")
    server.close()
    return stats["total_connections_received"], commands.get("cmdstat_set", {}).get("calls", 0)


def test_a_flood_of_readyz_costs_at_most_one_check_per_second(flood_redis, tmp_path):
    broker, cache = f"redis://127.0.0.1:{flood_redis.port}/0", f"redis://127.0.0.1:{flood_redis.port}/1"
    connections_before, sets_before = _counters(broker)

    result = run_django(
        FLOOD,
        tmp_path,
        DJANGO_SETTINGS_MODULE="portal.settings_test",
        CELERY_BROKER_URL=broker,
        CACHE_URL=cache,
    )

    assert result.returncode == 0, result.stderr
    flood = json.loads(result.stdout.strip().splitlines()[-1])
    connections, sets = _counters(broker)
    # At most one check per started second (+1 for a second boundary crossed during the flood).
    allowed = int(flood["seconds"]) + 2
    assert sets - sets_before <= allowed, f"{sets - sets_before} cache writes for 50 probes in {flood}"
    # Each cache alias keeps one pooled connection (two at most); every broker check opens one more.
    assert connections - connections_before <= allowed + 2, f"{connections - connections_before} connections"
