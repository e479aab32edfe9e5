"""A live gunicorn (the production command, two worker processes) on loopback, serving this test's database.

For tests that must see what a real deployment does across processes: prometheus-client's multiprocess mode,
or a curl command copied from the docs. The test's data must be committed (`transactional_db`) for the server
to see it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from django.conf import settings
from django.db import connection

from tests.isolated import BASE_DIR, SETTINGS_VARIABLES


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """The URL of the database this test runs on (the test database, not the configured one)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


@contextmanager
def gunicorn(tmp_path: Path, workers: int = 2, **variables: str) -> Iterator[str]:
    """Serve on a free loopback port; yields the base URL. Its log goes to tmp_path/gunicorn.log (a pipe
    nobody reads would fill up and stall the server)."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
    environment.pop("CACHE_URL", None)  # the database cache of this same database
    environment.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        CALLBRIDGE_READ_DOTENV="0",
        CALLBRIDGE_VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=database_url(),
        SECRET_KEY=settings.SECRET_KEY,
        FIELD_ENCRYPTION_KEYS=",".join(settings.FIELD_ENCRYPTION_KEYS),
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
    )
    environment.update(variables)
    log_path = tmp_path / "gunicorn.log"
    # The server's database cache needs its table in the test database (the test process may cache in Redis,
    # in which case nothing created it).
    subprocess.run(
        [sys.executable, "manage.py", "createcachetable"],
        cwd=BASE_DIR,
        env=environment,
        check=True,
        timeout=120,
    )
    command = [sys.executable, "-m", "gunicorn", "portal.wsgi", "-k", "gthread", "--threads", "4"]
    command += ["-w", str(workers), "-b", f"127.0.0.1:{port}", "--timeout", "60"]
    with open(log_path, "wb") as log:
        # A session of its own, so the arbiter and its workers stop together, and nothing else.
        process = subprocess.Popen(
            command, cwd=BASE_DIR, env=environment, stdout=log, stderr=log, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or a worker still importing
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start: {log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
