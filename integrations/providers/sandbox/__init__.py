"""The sandbox's far end: a simulated PBX and a simulated CRM that live inside the portal.

The `sandbox_pbx` and `sandbox_crm` adapters (integrations/providers/sandbox_pbx.py, sandbox_crm.py) are ordinary
providers: real signatures, the real outbox, the real worker. Only what sits at the other end of the wire is
simulated, here: the PBX's memory of the calls it played, its directory, call details, click-to-call and
generated recordings (`farend`), the CRM's inbox and routing table (`models`), and their pages (`views`, the
admin inbox). The adapters call `farend` directly rather than over HTTP, because the outbound client's SSRF guard
refuses loopback, as it must; the same functions also answer at /sandbox/pbx/<public_id>/... for people and
tools that want to see the simulated PBX's API.

Everything here refuses to work unless settings.SANDBOX_ENABLED (default: on with DEBUG only).
"""

from __future__ import annotations

from django.conf import settings

from integrations.providers.base import ProviderError

DISABLED_MESSAGE = "sandbox providers are disabled on this portal (SANDBOX_ENABLED=false)"


class SandboxDisabled(ProviderError):
    def __init__(self) -> None:
        super().__init__(DISABLED_MESSAGE, permanent=True)


def enabled() -> bool:
    return bool(getattr(settings, "SANDBOX_ENABLED", False))


def require_enabled() -> None:
    """Called at every entry point of the sandbox: a production portal never plays invented calls."""
    if not enabled():
        raise SandboxDisabled()
