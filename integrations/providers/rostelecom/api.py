"""What we send the Rostelecom PBX: signed JSON POSTs to `{api_url}/<method>` — `call_back` (click-to-call),
`get_record` (a temporary recording link) and `users_info` (the directory). `call_info` lives in call_info.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from integrations import http
from integrations.providers.base import DirectoryEntry, OriginateResult, ProviderError
from integrations.providers.rostelecom.wire import dump_json, pin_of, result_is_zero

if TYPE_CHECKING:
    from calls.models import OriginateRequest, Recording


# Outbound timeouts (connect, read). Public clients wait 10–15 s; click-to-call runs inside a CRM's request,
# so it gets a shorter read timeout.
TIMEOUT = (3.05, 10)
CALL_BACK_TIMEOUT = (3.05, 8)


class RostelecomError(ProviderError):
    """The PBX answered with a non-zero `result`; the message carries the PBX's own words."""


class RostelecomApi:
    """Outbound half of RostelecomProvider: one signed POST and the commands built on it."""

    def post(self, method: str, payload: dict[str, Any], timeout: Any = TIMEOUT) -> dict[str, Any]:
        """One signed POST to `{api_url}/{method}`; returns the answer when its `result` is 0."""
        client_id, sign_key = self._credentials()
        if not client_id or not sign_key:
            raise ProviderError(
                "The Rostelecom connection has no client_id or sign_key", permanent=True, flag_connection=True
            )
        domain = str(self.settings.get("domain") or "").strip()
        if domain and "domain" not in payload:
            payload = {**payload, "domain": domain}
        body = dump_json(payload)
        url = f"{str(self.settings['api_url']).rstrip('/')}/{method}"
        response = http.request(
            "POST",
            url,
            data=body,
            headers={"Content-Type": "application/json", **self.signed_headers(body)},
            timeout=timeout,
            secrets=self.secret_values(),
        )
        try:
            answer = response.json()
        except ValueError:
            raise ProviderError(
                f"Rostelecom {method}: the answer is not JSON",
                status=response.status_code,
                body=response.text[:500],
            ) from None
        if not isinstance(answer, dict):
            raise ProviderError(f"Rostelecom {method}: unexpected answer", body=response.text[:500])
        if not result_is_zero(answer.get("result")):
            message = str(answer.get("resultMessage") or "no message").strip()
            raise RostelecomError(
                f"Rostelecom {method} refused: {message} (result {answer.get('result')!r})",
                body=response.text[:500],
            )
        return answer

    def originate(self, request: OriginateRequest) -> OriginateResult:
        """call_back: the PBX rings the employee's PIN, then dials the client; its session_id names the call."""
        try:
            answer = self.post(
                "call_back",
                {"from_pin": request.extension, "request_number": request.phone},
                CALL_BACK_TIMEOUT,
            )
        except RostelecomError as exc:
            raise RostelecomError(str(exc), permanent=True, body=exc.body) from None
        return OriginateResult(str(answer.get("session_id") or ""))

    def recording_link(self, recording: Recording) -> str:
        """get_record: a temporary link, bound to `ip_adress` (sic) when record_ip is set."""
        session_id = str((recording.hints or {}).get("session_id") or recording.call.provider_call_id)
        payload: dict[str, Any] = {"session_id": session_id}
        if self.settings.get("record_ip"):
            payload["ip_adress"] = self.settings["record_ip"]
        answer = self.post("get_record", payload)  # a non-zero result is retried: the file may not be ready
        url = str(answer.get("url") or "").strip()
        if not url:
            raise ProviderError("Rostelecom get_record: the answer has no url")
        return url

    def list_extensions(self) -> list[DirectoryEntry]:
        """users_info: the domain's users (groups are not extensions anyone works at)."""
        try:
            answer = self.post("users_info", {})
        except RostelecomError as exc:
            raise RostelecomError(str(exc), permanent=True, body=exc.body) from None
        entries = []
        for user in answer.get("users") or []:
            if not isinstance(user, dict):
                continue
            number = pin_of(user.get("pin"))
            if not number:
                continue
            name = str(user.get("display_name") or user.get("name") or "").strip()
            entries.append(
                DirectoryEntry(number=number, name=name, email=str(user.get("email") or "").strip())
            )
        return entries
