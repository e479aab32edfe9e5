"""The promise of docs/api.md: a new reader lists yesterday's missed calls with one curl command. The command
is taken from the document as written and run by a shell against a live server."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import zoneinfo
from pathlib import Path

import pytest

from api.models import ApiKey
from tests.crm_world import CallScript, play
from tests.live_server import gunicorn

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "api.md"
MOSCOW = zoneinfo.ZoneInfo("Europe/Moscow")


def yesterdays_command() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("**Yesterday's missed calls**") :]
    (command,) = re.findall(r"```sh\n(.*?)```", section, re.S)[:1]
    return command


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_documented_curl_command_lists_yesterdays_missed_calls(tmp_path, pbx, tenant):
    today = dt.datetime.now(MOSCOW).date()
    yesterday = today - dt.timedelta(days=1)

    def at(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(hour, minute), MOSCOW).astimezone(dt.UTC)

    def missed(call_id: str, start: dt.datetime) -> None:
        script = CallScript(call_id, start=start)
        play(pbx, script.event(0, "ringing", "101"), script.event(20, "completed", outcome="missed"))

    missed("yesterday-morning", at(yesterday, 0, 5))
    missed("yesterday-evening", at(yesterday, 23, 50))
    missed("the-day-before", at(yesterday - dt.timedelta(days=1), 23, 50))
    missed("today", at(today, 0, 1))
    answered = CallScript("answered-yesterday", start=at(yesterday, 12))
    play(
        pbx,
        answered.event(0, "ringing", "101"),
        answered.event(3, "answered", "101"),
        answered.event(9, "completed"),
    )
    key = ApiKey.issue(tenant, "reporting")[1]

    with gunicorn(tmp_path) as base:
        result = subprocess.run(
            ["bash", "-c", yesterdays_command()],
            env={"PATH": "/usr/bin:/bin", "CALLBRIDGE": base, "KEY": key},
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert result.returncode == 0, result.stderr
    listed = [call["provider_call_id"] for call in json.loads(result.stdout)["results"]]
    assert listed == ["yesterday-evening", "yesterday-morning"]
