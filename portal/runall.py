"""The local launcher behind `make run`: the web server, the inbox processor, a real Celery worker and Celery beat.

    python -m portal.runall                  prepare the database, then serve until Ctrl-C
    python -m portal.runall write-env PATH   write a first-run .env with fresh keys (never overwrites)

Preparing means `migrate`, `createcachetable` and, on the very first run only, `seed_demo`: its output (the
admin URL and the demo login) is shown once the web server listens, and kept in VAR_DIR/seed_demo.txt, the
stamp that stops it from running again.

The processes stay in the launcher's process group, so a Ctrl-C in the terminal (or a signal to the whole
group) reaches all of them; the launcher also forwards SIGINT/SIGTERM as SIGTERM, which is a warm shutdown for
the worker. When any of them exits, the others are stopped too: a portal without its worker would accept
webhooks and never deliver them. Production runs these as separate services instead (README, docs/operations.md).
"""

# S603: every command below is built here from sys.executable and fixed arguments; nothing comes from input.
# ruff: noqa: S603

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

BASE_DIR = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(BASE_DIR / "manage.py")]
CELERY = [sys.executable, "-m", "celery", "-A", "portal"]

# Long enough for the worker's soft shutdown (CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = 10 s) to let a task finish.
STOP_GRACE_SECONDS = 20.0
POLL_SECONDS = 0.5


def write_env(path: Path) -> bool:
    """Create a development .env with a random SECRET_KEY and Fernet key; an existing file is kept as it is."""
    from cryptography.fernet import Fernet

    text = (
        "# Written by `make run` on its first run, for local development only: DEBUG is on.\n"
        "# Every variable, with its default and meaning, is in .env.example and README.md.\n"
        "DEBUG=true\n"
        f"SECRET_KEY={secrets.token_urlsafe(50)}\n"
        f"FIELD_ENCRYPTION_KEYS={Fernet.generate_key().decode()}\n"
    )
    try:
        # O_EXCL: never replace keys that already encrypt stored secrets. 0600: the file holds secrets.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    print(
        f"Wrote {path} with a new SECRET_KEY and FIELD_ENCRYPTION_KEYS (keep it: it decrypts stored secrets)."
    )
    return True


def prepare(var_dir: Path) -> str | None:
    """Migrate, create the cache table and seed the demo tenant on the first run only.

    Returns what seed_demo printed (the admin URL and the demo login) when it ran now, None when it ran before.
    """
    subprocess.run([*MANAGE, "migrate", "--noinput"], cwd=BASE_DIR, check=True)
    subprocess.run([*MANAGE, "createcachetable"], cwd=BASE_DIR, check=True)
    seed_note = seed_note_path(var_dir)
    if seed_note.exists():
        return None
    result = subprocess.run(
        [*MANAGE, "seed_demo"], cwd=BASE_DIR, check=True, stdout=subprocess.PIPE, text=True
    )
    # The stamp, written only after success so a failed seed is retried by the next `make run`. It keeps the
    # demo login for a developer who missed it; var/ is git-ignored and the file is readable by its owner only.
    fd = os.open(seed_note, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(result.stdout)
    return result.stdout


def seed_note_path(var_dir: Path) -> Path:
    return var_dir / "seed_demo.txt"


def commands(port: int, var_dir: Path, log_level: str) -> dict[str, list[str]]:
    return {
        # --noreload: the launcher supervises; the autoreloader would fork a second server process.
        "web": [*MANAGE, "runserver", f"0.0.0.0:{port}", "--noreload"],
        # Threads, not prefork: one process is enough on a laptop and stops promptly. Gossip, mingle and
        # heartbeats only matter between several workers.
        "worker": [
            *CELERY,
            "worker",
            "--pool=threads",
            "--concurrency=4",
            f"--loglevel={log_level}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        "beat": [*CELERY, "beat", f"--loglevel={log_level}", f"--schedule={var_dir / 'celerybeat-schedule'}"],
        # Applies the events webhooks store (docs/pipeline.md "Inbox"); on SQLite it polls INBOX_POLL_SECONDS.
        "inbox": [*MANAGE, "process_inbox"],
    }


class Supervisor:
    """Runs named commands until a signal arrives or one of them exits, then stops the rest."""

    def __init__(self, commands: dict[str, list[str]]) -> None:
        self.commands = commands
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_requested = threading.Event()
        self.stopping = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            # A second Ctrl-C while waiting for the worker's warm shutdown: stop at once.
            self._signal_all(signal.SIGKILL)
            return
        self.stop_requested.set()

    def _signal_all(self, signum: int) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # it exited between poll() and the signal
                    process.send_signal(signum)

    def run(self, on_tick: Callable[[], None] | None = None) -> int:
        """Start every command, block until a signal or a child's exit, stop the rest; return the exit code."""
        # Handlers first, so a Ctrl-C that arrives while the children start still stops all of them.
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for name, command in self.commands.items():
                self.processes[name] = subprocess.Popen(command, cwd=BASE_DIR)
            return self._supervise(on_tick)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _supervise(self, on_tick: Callable[[], None] | None) -> int:
        while not self.stop_requested.wait(POLL_SECONDS):
            for name, process in self.processes.items():
                code = process.poll()
                if code is not None:
                    print(f"runall: {name} exited with code {code}; stopping the others.", flush=True)
                    # A child killed by a signal reports -N; the shell convention for that is 128 + N.
                    return 128 - code if code < 0 else code or 1
            if on_tick is not None:
                on_tick()
        return 0

    def stop(self) -> None:
        self.stopping = True
        self._signal_all(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                print(f"runall: {name} did not stop in {STOP_GRACE_SECONDS:.0f} s; killing it.", flush=True)
                process.kill()
                process.wait()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def serve() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from django.conf import settings

    # Reading the settings here fails fast, with the variable's name, before the processes start; it also
    # loads .env into os.environ, so the children see the same configuration.
    port, var_dir, log_level = settings.PORT, Path(settings.VAR_DIR), settings.LOG_LEVEL
    var_dir.mkdir(parents=True, exist_ok=True)
    try:
        seed_output = prepare(var_dir)
    except subprocess.CalledProcessError as exc:
        print(f"runall: `{' '.join(exc.cmd[1:])}` failed with code {exc.returncode}.", file=sys.stderr)
        return exc.returncode or 1

    supervisor = Supervisor(commands(port, var_dir, log_level))
    announced = False

    def announce_when_listening() -> None:
        nonlocal announced
        if announced or not _listening(port):
            return
        announced = True
        lines = [
            "",
            f"Callbridge is running: http://localhost:{port}/  (inbox processor, worker and beat beside it; Ctrl-C stops all)",
            f"Admin: http://localhost:{port}/admin/",
        ]
        if seed_output is not None:
            lines += ["", "Demo data (seed_demo, first run only):", seed_output.rstrip()]
        else:
            lines += [
                f"Demo login: created on the first run; seed_demo's output is in {seed_note_path(var_dir)}"
            ]
        print("\n".join(lines) + "\n", flush=True)

    return supervisor.run(on_tick=announce_when_listening)


def main(argv: list[str]) -> int:
    if argv[:1] == ["write-env"] and len(argv) == 2:
        write_env(Path(argv[1]))
        return 0
    if not argv or argv == ["serve"]:
        return serve()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C while migrating or seeding, before the supervisor took over signals
        sys.exit(130)
