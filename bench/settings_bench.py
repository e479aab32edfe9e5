"""Production settings plus bench/urls.py's bare view (DJANGO_SETTINGS_MODULE for the benchmarks' servers)."""

from __future__ import annotations

from portal.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
