"""What tenant staff may see of an outbound failure.

Issue 15's rule: error bodies from private targets are not shown to tenant staff. A connection may reach a private
address only because an operator allowed it (OUTBOUND_ALLOWED_NETWORKS, a connection's `allowed_networks`,
OUTBOUND_ALLOW_PRIVATE_NETWORKS); what such a host answers (an intranet error page, a stack trace) describes the
operator's network, not the tenant's integration. Whether a connection is such a target is decided in one place,
`Connection.reaches_private_network()` (the admin's pages use it too); `shown_error()` applies the rule to a job's
error for the read API's `deliveries.last_error`.
"""

from __future__ import annotations

from typing import Any

HIDDEN = "details hidden: the target is on a private network"


def shown_error(connection: Any, message: str, status: int | None = None) -> str:
    """A job's last error as tenant staff may see it: as stored, or only its HTTP status for private targets."""
    if not message or connection is None or not connection.reaches_private_network():
        return message
    return f"HTTP {status} ({HIDDEN})" if status else HIDDEN
