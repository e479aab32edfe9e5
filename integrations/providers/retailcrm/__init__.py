"""RetailCRM (Simla.com) telephony integration module: the portal plays the PBX.

What goes where (seed 001, digest protocols/crm.md §2):

* portal → RetailCRM, through :class:`RetailCrmClient` (API v5, ``X-API-KEY`` header, form-urlencoded POSTs whose
  nested objects travel as one JSON string field, the ``success``/``errorMsg``/``errors`` envelope):
  module registration and read-back (``integration-modules``), users, the responsible manager for routing,
  call events (pop-up cards) and the call history upload (≤ 50 calls a request);
* RetailCRM → portal, through HookView: ``make-call`` (click-to-call) and ``user-status``, both plain GETs
  authenticated only by the ``clientId`` we registered.

RetailCRM limits every API key to 10 requests/s, and to 40 requests/s under ``/telephony/``, answering 503 above
that; :class:`RateLimiter` keeps all worker processes of one key under those numbers through the shared cache.

The admin calls the module-level services :func:`register_module`, :func:`read_module_back`,
:func:`propose_mappings` and :func:`request_sync` (operations.py).

The package, by concern: api.py (the client, its errors and the rate limiter), webhooks.py (what RetailCRM
sends us), messages.py (call events and the history upload), registration.py (the module document),
operations.py (admin services); this module holds the adapter's configuration, routing and job dispatch.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, ClassVar

from django.utils.translation import gettext, gettext_lazy

from integrations.http import OutboundError
from integrations.providers.base import (
    FINAL,
    POPUP,
    CheckResult,
    CrmProvider,
    Field,
    JobKind,
    ProviderError,
    RoutingAnswer,
    RoutingQuery,
    secrets_equal,
)
from integrations.providers.retailcrm.api import UPLOAD_CLAIM, RetailCrmClient, RetailCrmError, _person_name
from integrations.providers.retailcrm.messages import EVENT, HANGUP, UPLOAD, RetailCrmMessages
from integrations.providers.retailcrm.registration import SYNC, RetailCrmRegistration
from integrations.providers.retailcrm.webhooks import RetailCrmWebhooks

if TYPE_CHECKING:
    from calls.models import OutboundJob


class RetailCrmProvider(RetailCrmWebhooks, RetailCrmMessages, RetailCrmRegistration, CrmProvider):
    key = "retailcrm"
    settings_fields = (
        Field("account_url", "url"),
        Field("module_code", "str", default="callbridge"),
        Field("upload_strategy", "choice", default="immediate", choices=("immediate", "periodic")),
        Field("upload_interval_minutes", "int", default=10, minimum=1, maximum=1440),
        Field("send_events", "bool", default=True),
        # Let users edit extension codes and external phones in RetailCRM (allowEdit); the portal then reads the
        # module back and merges before every push (registration.py).
        Field("allow_crm_edits", "bool", default=False),
    )
    secret_fields = (Field("api_key", "secret"), Field("client_id", "secret", issued=True))
    inbound_paths = ("make-call", "user-status")
    auth_failure_status = 403
    job_kinds = {
        EVENT: POPUP,
        # The end of a call is a completion message: it never expires.
        HANGUP: FINAL,
        # History uploads are independent of the call's other messages, so they do not queue behind them.
        UPLOAD: JobKind(window=FINAL.window, batch_size=UPLOAD_CLAIM, ordered=False),
        SYNC: JobKind(window=dt.timedelta(hours=24), ordered=False),
    }

    admin_operations: ClassVar[dict[str, tuple[Any, str]]] = {
        "register": (
            gettext_lazy("Register the telephony module now"),
            "integrations.providers.retailcrm.operations.register_module_report",
        ),
        "read_back": (
            gettext_lazy("Import mappings edited in RetailCRM"),
            "integrations.providers.retailcrm.operations.read_module_back_report",
        ),
        "propose": (
            gettext_lazy("Propose mappings by e-mail"),
            "integrations.providers.retailcrm.operations.propose_mappings_report",
        ),
    }

    def client(self, *, limited: bool = True) -> RetailCrmClient:
        return RetailCrmClient(
            self.settings.get("account_url") or "", self.secrets.get("api_key") or "", limited=limited
        )

    @property
    def module_code(self) -> str:
        return self.settings.get("module_code") or "callbridge"

    def perform(self, job: OutboundJob) -> str:
        if job.kind == UPLOAD:
            result = self.perform_batch([job])[job.pk]
            if isinstance(result, Exception):
                raise result
            return result
        if job.kind in (EVENT, HANGUP):
            return self._send_event(job)
        if job.kind == SYNC:
            result = self.register()
            summary = (
                f"registered; notExistUsersIds={result['notExistUsersIds']} "
                f"notExistSiteCodes={result['notExistSiteCodes']}"
            )
            return summary + (
                f"; kept from RetailCRM: {result['proposals']}" if result.get("proposals") else ""
            )
        return super().perform(job)

    def answers_routing(self, query: RoutingQuery) -> bool:
        return bool(self.settings.get("account_url") and self.secrets.get("api_key"))

    def lookup(self, query: RoutingQuery, timeout: float) -> RoutingAnswer | None:
        # Runs in a routing thread that must not touch the database, and the default shared cache is the database:
        # so no rate limiter here. A 503 just means no answer this time.
        try:
            answer = self.client(limited=False).responsible_manager(query.caller, timeout)
        except RetailCrmError as exc:
            if exc.status == 404 or exc.error_msg.startswith("Not found"):
                return None
            raise
        manager = answer.get("manager")
        code = str(manager.get("code") or "").strip() if isinstance(manager, dict) else ""
        if not code:
            return None  # no client, or the manager is not free: RetailCRM says nothing (digest §2.6)
        return RoutingAnswer(extension=code, display_name=_person_name(answer.get("customer")))

    def check_connection(self) -> CheckResult:
        """GET /api/v5/users (first page): a read that proves account_url and api_key; changes nothing."""
        try:
            answer = self.client().users(1)
        except ProviderError as exc:
            return CheckResult(
                False, gettext("RetailCRM refused: %(error)s") % {"error": exc}, exc.body[:500]
            )
        except OutboundError as exc:
            summary = gettext("RetailCRM could not be reached: %(error)s") % {"error": exc}
            return CheckResult(False, summary, exc.body[:500])
        users = answer.get("users") or []
        names = ", ".join(_person_name(u) or str(u.get("id", "")) for u in users[:20] if isinstance(u, dict))
        total = (answer.get("pagination") or {}).get("totalCount", len(users))
        summary = gettext("RetailCRM accepted the API key: %(count)s users") % {"count": total}
        return CheckResult(True, summary, names)

    def accepts_playback_client_id(self, client_id: str) -> bool:
        return secrets_equal(client_id, self.secrets.get("client_id"))
