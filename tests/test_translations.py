"""The Russian catalogue is complete and compiled; the admin speaks Russian by default and English on request;
nothing sent to a provider is translated. (.ci/run also checks that makemessages finds no string missing from
the catalogue, i.e. that it is not stale.)"""

from __future__ import annotations

import gettext
from pathlib import Path

import polib
import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import translation

from calls.models import Call
from tests.admin_world import FAST_HASHERS, build_world, client_for

CATALOGUE = Path(settings.BASE_DIR) / "locale" / "ru" / "LC_MESSAGES"


def test_every_string_is_translated_and_none_is_fuzzy_or_obsolete():
    po = polib.pofile(str(CATALOGUE / "django.po"))
    assert len(po) > 300
    assert [e.msgid for e in po.untranslated_entries()] == []
    assert [e.msgid for e in po.fuzzy_entries()] == []
    assert [e.msgid for e in po.obsolete_entries()] == []


def test_the_compiled_catalogue_matches_the_source():
    po = polib.pofile(str(CATALOGUE / "django.po"))
    with open(CATALOGUE / "django.mo", "rb") as mo:
        compiled = gettext.GNUTranslations(mo)
    stale = [e.msgid for e in po if compiled.gettext(e.msgid) != e.msgstr]
    assert stale == [], "run make messages"


def test_placeholders_survive_translation():
    import re

    po = polib.pofile(str(CATALOGUE / "django.po"))
    pattern = re.compile(r"%\(\w+\)s|\{\}")
    wrong = [e.msgid for e in po if sorted(pattern.findall(e.msgid)) != sorted(pattern.findall(e.msgstr))]
    assert wrong == []


def test_russian_is_the_default_and_english_is_available():
    from portal import settings as portal_settings

    assert portal_settings.LANGUAGE_CODE == "ru"
    assert [code for code, _name in portal_settings.LANGUAGES] == ["ru", "en"]
    assert "django.middleware.locale.LocaleMiddleware" in portal_settings.MIDDLEWARE


@pytest.fixture
def world(db, settings):
    settings.PASSWORD_HASHERS = FAST_HASHERS
    settings.LANGUAGE_CODE = "ru"  # as the portal ships
    return build_world()


def test_the_admin_speaks_russian_by_default(world):
    page = client_for(world.admin_a).get(reverse("admin:index")).content.decode()
    assert 'lang="ru"' in page
    assert "Сводка" in page and "История звонков" in page


def test_the_language_switch_turns_the_admin_english(world):
    client = client_for(world.admin_a)
    page = client.get(reverse("admin:index")).content.decode()
    assert 'id="language-switch"' in page and 'action="/i18n/setlang/"' in page
    response = client.post("/i18n/setlang/", {"language": "en", "next": "/admin/"}, follow=True)
    page = response.content.decode()
    assert 'lang="en"' in page and "Call history" in page


def test_the_login_page_offers_the_switch_too(db):
    page = Client().get(reverse("admin:login")).content.decode()
    assert 'id="language-switch"' in page


def test_provider_names_stay_as_the_providers_write_them(world):
    page = (
        client_for(world.admin_a).get(reverse("admin:integrations_crmconnection_changelist")).content.decode()
    )
    assert "planfix" in page  # the registry key, and LABELS are never marked for translation
    from integrations.providers.base import LABELS

    assert all(isinstance(label, str) for label in LABELS.values())


def test_a_calls_text_in_logs_is_not_translated(world):
    call = Call(direction="in", client_phone="+79161234567", provider_call_id="x")
    with translation.override("ru"):
        assert str(call) == "incoming +79161234567 (x)"
