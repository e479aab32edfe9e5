"""What we send Mango: signed form posts, validated locally first (bad requests lock the API out), and the
commands built on them: `commands/callback`, `commands/route`, `queries/recording/post` and
`config/users/request`.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from django.core.cache import cache

from integrations import http
from integrations.phones import digits_only
from integrations.providers.base import DirectoryEntry, OriginateResult, ProviderError
from integrations.providers.mango.wire import (
    CALLBACK_PREFIX,
    COMMAND_ID_MAX_BYTES,
    DISPLAY_NAME_MAX_BYTES,
    RATE_WINDOW_SECONDS,
    ROUTE_PREFIX,
    _int,
    _text,
    _truncate_bytes,
    compact_json,
    describe,
    is_success,
    sign,
)

if TYPE_CHECKING:
    from calls.models import OriginateRequest, OutboundJob, Recording

logger = logging.getLogger("callbridge.mango")


class MangoApi:
    """Outbound half of MangoProvider: signing, Mango's verdicts, the commands."""

    def _url(self, path: str) -> str:
        return f"{str(self.settings['api_url']).rstrip('/')}/{path}"

    def _validate(self, path: str, payload: dict[str, Any]) -> None:
        """Refuse locally what Mango would refuse: more than one bad request per 2 minutes locks the tenant's
        API out for 2 minutes (§2.2), so a bug here must not reach Mango."""

        def refuse(why: str, *, flag: bool = False) -> ProviderError:
            return ProviderError(f"{path}: not sent, {why}", permanent=True, flag_connection=flag)

        key, salt = self.secrets.get("api_key", ""), self.secrets.get("api_salt", "")
        if not key or not salt or any(ch.isspace() for ch in key + salt):
            raise refuse("the connection has no valid api_key/api_salt", flag=True)
        command_id = _text(payload.get("command_id"))
        if "command_id" in payload and not (0 < len(command_id.encode()) <= COMMAND_ID_MAX_BYTES):
            raise refuse("command_id must be 1 to 128 bytes")
        if path == "commands/callback":
            extension = _text((payload.get("from") or {}).get("extension"))
            if not extension.isdigit():
                raise refuse(f"from.extension must be an internal number, got {extension!r}")
            for name in ("to_number", "line_number"):
                value = _text(payload.get(name))
                if name in payload and not (value.isdigit() and len(value) <= 128):
                    raise refuse(f"{name} must be digits, got {value!r}")
        elif path == "commands/route":
            if not _text(payload.get("call_id")) or not _text(payload.get("to_number")).isdigit():
                raise refuse("call_id and a digit to_number are required")
            headers = payload.get("sip_headers") or {}
            if set(headers) - {"From/display-name"}:
                raise refuse("only the From/display-name SIP header may be sent with a route")
            if len(_text(headers.get("From/display-name")).encode()) > DISPLAY_NAME_MAX_BYTES:
                raise refuse("From/display-name is longer than 64 bytes")
        elif path == "queries/recording/post":
            if not _text(payload.get("recording_id")) or payload.get("action") not in {"download", "play"}:
                raise refuse("recording_id and action download|play are required")
        elif path == "stats/request":
            date_from, date_to = _int(payload.get("date_from")), _int(payload.get("date_to"))
            if date_from is None or date_to is None or not 0 < date_to - date_from <= 31 * 24 * 3600:
                raise refuse("date_from/date_to must span at most a month")
        elif path == "stats/result" and not _text(payload.get("key")):
            raise refuse("key is required")

    def _post(
        self, path: str, payload: dict[str, Any], *, allow_redirects: bool = True, timeout: Any = None
    ) -> Any:
        """Sign and send one request; returns the HTTP response. Raises ProviderError with Mango's verdict."""
        self._validate(path, payload)
        key, salt = self.secrets["api_key"], self.secrets["api_salt"]
        body = compact_json(payload)
        form = [("vpbx_api_key", key), ("sign", sign(key, body, salt)), ("json", body)]
        try:
            return http.default_client().request(
                "POST",
                self._url(path),
                data=form,
                timeout=timeout or http.DEFAULT_TIMEOUT,
                secrets=self.secret_values(),
                allow_redirects=allow_redirects,
            )
        except http.OutboundError as exc:
            if allow_redirects is False and exc.kind == "redirect" and getattr(exc, "location", ""):
                raise _Redirected(exc.location) from None
            raise self._http_failure(path, exc) from None

    def _command(self, path: str, payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """A request answered with JSON: the `result` (or older `code`) is read by class; 1000 is success."""
        response = self._post(path, payload, **kwargs)
        data = _json_or_empty(response.text)
        code = _result_code(data)
        if code is not None and not is_success(code):
            raise self._code_failure(path, code, body=response.text[:500])
        return data

    def _code_failure(
        self,
        path: str,
        code: int,
        *,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> ProviderError:
        message = f"{path}: Mango result {code} ({describe(code)})"
        if code in (4290, 4501):
            return ProviderError(message, status=status, retry_after=max(retry_after or 0, 2.0), body=body)
        if code == 5008 or 5000 <= code < 6000:
            # 5008 "service unavailable": Mango asks clients to back off (§2.2).
            return ProviderError(message, status=status, retry_after=max(retry_after or 0, 60.0), body=body)
        if path == "queries/recording/post" and code in (3300, 3320, 3340):
            # The file is written minutes after the call at peak times: not there yet is worth retrying.
            return ProviderError(message, status=status, retry_after=60.0, body=body)
        flag = code in (3102, 3105) or 2000 <= code < 3000
        return ProviderError(message, status=status, permanent=True, flag_connection=flag, body=body)

    def _http_failure(self, path: str, exc: http.OutboundError) -> ProviderError:
        """HTTP errors: the 2017 shape (420 with {"code": …}), the current one (4xx/5xx with a JSON error),
        and a 429 body without a Mango code ({"code": 0, "status": 429})."""
        data = _json_or_empty(exc.body)
        code = _result_code(data)
        if exc.status == 429:
            code = 4290
        if exc.status == 401:
            # Repeated bad requests lock the API for 2 minutes (or the key is wrong): tell the admin, retry later.
            self.connection.flag_error(
                f"{path}: Mango answered 401: wrong api_key, or the API is locked for 2 minutes after bad requests"
            )
            return ProviderError(f"{path}: HTTP 401 from Mango", status=401, retry_after=120.0, body=exc.body)
        if code is not None and code != 0:
            return self._code_failure(
                path, code, status=exc.status, body=exc.body, retry_after=exc.retry_after
            )
        if exc.status == 404 and path == "queries/recording/post":
            return ProviderError(
                f"{path}: recording not found yet", status=404, retry_after=60.0, body=exc.body
            )
        return ProviderError(
            exc.message,
            status=exc.status,
            permanent=exc.permanent,
            retry_after=max(exc.retry_after or 0, 60.0) if exc.status == 503 else exc.retry_after,
            body=exc.body,
        )

    def originate(self, request: OriginateRequest) -> OriginateResult:
        """commands/callback: Mango rings the employee first, then dials the client; both legs and the
        /result/callback carry our command_id, which is the correlation id."""
        from calls.models import OriginateRequest as OriginateRequestModel

        command_id = f"{CALLBACK_PREFIX}{uuid.uuid4().hex}"
        payload: dict[str, Any] = {
            "command_id": command_id,
            "from": {"extension": request.extension},
            "to_number": digits_only(request.phone),
        }
        if request.external_phone:
            payload["line_number"] = digits_only(request.external_phone)
        # Stored before sending: the result and the first legs may come back before this request returns.
        OriginateRequestModel.objects.filter(pk=request.pk).update(correlation_id=command_id)
        self._command("commands/callback", payload)
        return OriginateResult(command_id)

    def recording_link(self, recording: Recording) -> str:
        """queries/recording/post answers 302 with a temporary, single-use Location: read it, never follow
        it here (the fetch job downloads it right away)."""
        recording_id = _text((recording.hints or {}).get("recording_id"))
        if not recording_id:
            raise ProviderError("queries/recording/post: the call has no recording_id", permanent=True)
        payload = {"recording_id": recording_id, "action": "download"}
        try:
            response = self._post("queries/recording/post", payload, allow_redirects=False)
        except _Redirected as redirect:
            return redirect.location
        data = _json_or_empty(response.text)
        code = _result_code(data)
        if code is not None and not is_success(code):
            raise self._code_failure("queries/recording/post", code, body=response.text[:500])
        raise ProviderError("queries/recording/post: no download link in Mango's answer", retry_after=60.0)

    def list_extensions(self) -> list[DirectoryEntry]:
        """config/users/request: every employee with an internal number. Mango allows one such request per
        2 seconds per product, so a second click within 2 s is refused here rather than by Mango."""
        if not cache.add(f"mango:users-slot:{self.connection.tenant_id}", 1, RATE_WINDOW_SECONDS):
            raise ProviderError(
                "config/users/request: Mango allows one directory request per 2 seconds; try again",
                retry_after=RATE_WINDOW_SECONDS,
            )
        data = self._command("config/users/request", {})
        entries = []
        for user in data.get("users") or []:
            general = user.get("general") or {}
            telephony = user.get("telephony") or {}
            number = _text(telephony.get("extension"))
            if number:
                entries.append(
                    DirectoryEntry(
                        number=number, name=_text(general.get("name")), email=_text(general.get("email"))
                    )
                )
        return entries

    def _perform_route(self, job: OutboundJob) -> str:
        """Ask the routing service whose caller this is, then move the IVR leg to that employee, with the
        caller's name on the phone. Skipped when the leg is gone or Mango's 1-per-2-s budget is used up: the
        PBX's own scheme then routes the call."""
        from calls.models import CallEvent
        from calls.routing import resolve

        call, leg_id = job.call, job.payload.get("leg_id", "")
        if call is None or call.ended:
            return "skipped: the call has ended"
        stored = CallEvent.objects.filter(  # applied or still in the inbox
            pbx_connection_id=call.pbx_connection_id, provider_call_id=call.provider_call_id
        )
        if stored.filter(leg_id=leg_id, kind="leg_ended").exists():
            return "skipped: the IVR leg has ended"
        caller = job.payload.get("caller", "")
        if not caller:
            return "skipped: the caller's number is unknown"
        decision = resolve(
            self.connection.tenant,
            caller,
            job.payload.get("did", ""),
            call=call,
            provider_call_id=call.provider_call_id,
            pbx_connection=self.connection,
        )
        if not decision.extension:
            return f"skipped: no responsible extension ({decision.source}); the PBX scheme routes"
        if not cache.add(f"mango:route-slot:{self.connection.tenant_id}", 1, RATE_WINDOW_SECONDS):
            logger.info(
                "mango %s: route of %s skipped, one route per 2 s", self.connection, call.provider_call_id
            )
            return "skipped: rate limit (one route per 2 s); the PBX scheme routes"
        payload: dict[str, Any] = {
            "command_id": job.payload.get("command_id") or f"{ROUTE_PREFIX}{uuid.uuid4().hex}",
            "call_id": leg_id,
            "to_number": decision.extension,
        }
        name = _truncate_bytes(decision.display_name.strip(), DISPLAY_NAME_MAX_BYTES)
        if name:
            payload["sip_headers"] = {"From/display-name": name}
        self._command("commands/route", payload)
        return f"routed to {decision.extension} ({decision.source})"


class _Redirected(Exception):
    """queries/recording/post answered with the redirect we wanted."""

    def __init__(self, location: str) -> None:
        super().__init__("redirected")
        self.location = location


def _json_or_empty(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text or "")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _result_code(data: dict[str, Any]) -> int | None:
    """`result` in a 200 body (and in /result/*), `code` in the 2017 HTTP 420 body and the newer error bodies."""
    for name in ("result", "code"):
        if name in data:
            code = _int(data.get(name))
            if code is not None:
                return code
    return None
