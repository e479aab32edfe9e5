"""The fault suite's stack (one per run) and its results table, printed at the end of the run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.faults.stack import Stack, running_stack

_results: list[dict] = []


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("redis-server") is None:
        pytest.fail("the fault suite needs redis-server (a private one is started on a free port)")
    with running_stack(tmp_path_factory.mktemp("faults"), {}) as running:
        running.results = _results
        yield running


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _results:
        return
    terminalreporter.section("fault suite: measured figures")
    for row in _results:
        scenario = row["scenario"]
        figures = ", ".join(f"{k}={v}" for k, v in row.items() if k != "scenario")
        terminalreporter.write_line(f"{scenario:<44} {figures}")
