"""What RetailCRM sends us: `make-call` (click-to-call) and `user-status`, both plain GETs authenticated only by
the `clientId` we registered.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from rest_framework.response import Response

from integrations.models import ExtensionMapping
from integrations.providers.base import WebhookAuthError, WebhookInputError, secrets_equal

if TYPE_CHECKING:
    from django.http import HttpRequest
    from rest_framework.request import Request


logger = logging.getLogger("callbridge.retailcrm")


USER_STATUSES = ("free", "busy", "dinner", "break")
# Click-to-call outcome → the HTTP status RetailCRM gets. Anything but 200 shows "call failed" to the user.
ORIGINATE_STATUS = {
    "bad_number": 400,
    "unknown_extension": 404,
    "no_pbx": 409,
    "pbx_refused": 502,
    "pbx_unreachable": 504,
    # Refusals of the click-to-call guard (calls/click_to_call.py): the PBX was not asked.
    "throttled": 429,
    "region": 403,
    "number_type": 403,
}
# ExtensionMapping.crm_user_id and OriginateRequest.crm_user_id: a longer userId is no user of ours, and
# PostgreSQL would refuse to store it.
MAX_USER_ID = 100


class RetailCrmWebhooks:
    """Inbound half of RetailCrmProvider."""

    def authenticate(self, request: HttpRequest, action: str) -> None:
        # The clientId in the query string is RetailCRM's only credential (seed 001). Never echo or log it.
        if not secrets_equal(request.GET.get("clientId"), self.secrets.get("client_id")):
            raise WebhookAuthError("Invalid clientId")

    def error_body(self, status: int, message: str) -> Any:
        return {"success": False, "error": message}

    def handle(self, request: Request, action: str) -> Response:
        if action == "make-call":
            return self._make_call(request)
        if action == "user-status":
            return self._user_status(request)
        raise WebhookInputError(f"Unknown action {action!r}")

    def _make_call(self, request: Request) -> Response:
        from calls.services import originate

        params = request.query_params
        code = (params.get("code") or "").strip()
        phone = _restore_plus(params.get("phone"))
        external_phone = _restore_plus(params.get("externalPhone"))
        user_id = (params.get("userId") or "").strip()
        if not code or not phone:
            raise WebhookInputError("code and phone are required")
        if len(user_id) > MAX_USER_ID:
            raise WebhookInputError(f"userId longer than {MAX_USER_ID} characters")
        outcome = originate(
            self.connection.tenant,
            code,
            phone,
            crm_connection=self.connection,
            external_phone=external_phone,
            crm_user_id=user_id,
            context={"crm": "retailcrm", "userId": user_id},
        )
        if outcome.ok:
            return Response({"success": True, "callId": outcome.correlation_id}, status=200)
        status = ORIGINATE_STATUS.get(outcome.code, 502)
        logger.info(
            "retailcrm %s: make-call by %s to %s failed: %s", self.connection, code, phone, outcome.error
        )
        return Response({"success": False, "error": outcome.error, "code": outcome.code}, status=status)

    def _user_status(self, request: Request) -> Response:
        params = request.query_params
        user_id = (params.get("userId") or "").strip()
        code = (params.get("code") or "").strip()
        status = (params.get("status") or "").strip()
        if not status or not (user_id or code) or len(status) > 30:
            raise WebhookInputError("userId (or code) and status are required")
        if len(user_id) > MAX_USER_ID:
            raise WebhookInputError(f"userId longer than {MAX_USER_ID} characters")
        if status not in USER_STATUSES:
            logger.info("retailcrm %s: unexpected user status %r stored as is", self.connection, status)
        mine = ExtensionMapping.objects.filter(
            crm_connection=self.connection, extension__tenant_id=self.connection.tenant_id
        )
        now = timezone.now()
        updated = mine.filter(crm_user_id=user_id).update(status=status, status_at=now) if user_id else 0
        if not updated and code:
            updated = mine.filter(extension__number=code).update(status=status, status_at=now)
        if not updated:
            logger.info(
                "retailcrm %s: status for unmapped user %s / code %s ignored", self.connection, user_id, code
            )
        return Response({"success": True, "updated": updated}, status=200)


def _restore_plus(value: str | None) -> str:
    """RetailCRM puts the number into the URL unencoded (`phone=+7912…`), so the query decoder reads the '+' as a
    space. A leading space before a digit can only have been that '+'."""
    raw = value or ""
    stripped = raw.strip()
    if raw[:1] == " " and stripped[:1].isdigit():
        return "+" + stripped
    return stripped
