"""The local launcher: a first-run .env with real keys, and three processes that live and stop together."""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading
from pathlib import Path

from cryptography.fernet import Fernet

from portal.runall import Supervisor, write_env

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_first_run_env_has_debug_and_fresh_keys_readable_by_its_owner_only(tmp_path: Path):
    path = tmp_path / ".env"

    assert write_env(path) is True

    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if not line.startswith("#"))
    assert values["DEBUG"] == "true"
    assert len(values["SECRET_KEY"]) >= 50
    Fernet(values["FIELD_ENCRYPTION_KEYS"].encode())  # a usable key, not a placeholder
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_env_is_never_rewritten(tmp_path: Path):
    path = tmp_path / ".env"
    path.write_text("SECRET_KEY=keep-me\n")

    assert write_env(path) is False
    assert path.read_text() == "SECRET_KEY=keep-me\n"


def test_when_one_process_exits_the_others_are_stopped_and_its_code_is_returned():
    supervisor = Supervisor(
        {"web": SLEEP, "worker": [sys.executable, "-c", "raise SystemExit(3)"], "beat": SLEEP}
    )

    assert supervisor.run() == 3

    assert supervisor.processes["web"].returncode == -signal.SIGTERM
    assert supervisor.processes["beat"].returncode == -signal.SIGTERM


def test_sigterm_to_the_launcher_stops_every_process():
    supervisor = Supervisor({"web": SLEEP, "worker": SLEEP, "beat": SLEEP})

    def terminate_once_all_started() -> None:
        if len(supervisor.processes) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    previous_handler = signal.getsignal(signal.SIGTERM)
    assert threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
    assert supervisor.run(on_tick=terminate_once_all_started) == 0

    assert {name: p.returncode for name, p in supervisor.processes.items()} == {
        "web": -signal.SIGTERM,
        "worker": -signal.SIGTERM,
        "beat": -signal.SIGTERM,
    }
    assert signal.getsignal(signal.SIGTERM) is previous_handler
