"""Test providers for recordings: a PBX that hands out recording links from its settings (a fixed URL, or a
fresh one from its own link API, as Mango's queries/recording/post does) and a CRM that plays links with
?clientId=… (as RetailCRM does)."""

from __future__ import annotations

from typing import Any, ClassVar

from integrations.http import default_client
from integrations.providers.base import Field, ProviderError, secrets_equal
from tests.pipeline.fake_providers import FakeCrm, FakePbx


class LinkPbx(FakePbx):
    key = "linkpbx"
    settings_fields = (*FakePbx.settings_fields, Field("record_url", "str"), Field("link_api", "str"))
    # Every link handed out, in order, across instances (the pipeline makes a new adapter per job).
    links_given: ClassVar[list[str]] = []

    def recording_link(self, recording: Any) -> str:
        if self.settings.get("link_api"):
            response = default_client().request(
                "GET", self.settings["link_api"], params={"call": recording.call.provider_call_id}
            )
            link = response.json()["url"]
        elif self.settings.get("record_url"):
            link = self.settings["record_url"]
        else:
            raise ProviderError("no recording for this call", permanent=True)
        LinkPbx.links_given.append(link)
        return link

    @classmethod
    def clean_settings(cls, data: Any) -> dict[str, Any]:
        return dict(data or {})


class ClientIdCrm(FakeCrm):
    key = "clientidcrm"

    def accepts_playback_client_id(self, client_id: str) -> bool:
        return secrets_equal(client_id, self.secrets.get("client_id"))
