"""Helpers for the Mango tests: fixtures from tests/fixtures/mango, signed form posts as Mango sends them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

API_KEY = "k7x2m9q4w8e1r5t3y6u0i2o4p8a1s3dz"
API_SALT = "s8d7f6g5h4j3k2l1z0x9c8v7b6n5m4q3"
API_URL = "https://app.mango-office.ru/vpbx"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mango"
T0 = 1732438800  # the fixtures' first second, 2024-11-24 09:00:00 UTC


def load(name: str, **replacements: str) -> Any:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    for old, new in replacements.items():
        text = text.replace("{" + old + "}", new)
    return json.loads(text)


def mango_sign(key: str, json_text: str, salt: str) -> str:
    return hashlib.sha256((key + json_text + salt).encode("utf-8")).hexdigest()


def form(json_text: str, key: str = API_KEY, salt: str = API_SALT) -> str:
    """The body Mango posts (and the body we must post): vpbx_api_key, sign, json."""
    return urlencode([("vpbx_api_key", key), ("sign", mango_sign(key, json_text, salt)), ("json", json_text)])


def compact(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def post(client: Any, pbx: Any, path: str, payload: Any, *, key: str | None = None, salt: str | None = None):
    text = payload if isinstance(payload, str) else compact(payload)
    secrets = pbx.secrets
    body = form(text, key or secrets["api_key"], salt or secrets["api_salt"])
    return client.post(
        f"/hooks/mango/{pbx.public_id}/{path}", data=body, content_type="application/x-www-form-urlencoded"
    )


def deliver(client: Any, pbx: Any, webhooks: list[dict[str, Any]]) -> None:
    for webhook in webhooks:
        response = post(client, pbx, webhook["path"], webhook["json"])
        assert response.status_code == 200, (webhook["path"], response.content)


def notices(crm: Any) -> dict[str, str]:
    """The fake CRM's jobs: '<notice>:<extension>' → job kind."""
    from calls.models import OutboundJob

    return {
        f"{job.payload['notice']}:{job.payload['ext']}": job.kind
        for job in OutboundJob.objects.filter(crm_connection=crm)
    }
