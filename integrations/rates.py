"""Rates written as `N/period` (`30/min`), as the settings validate them."""

from __future__ import annotations

PERIODS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """'30/min' → (30, 60): how many in how many seconds."""
    count, period = rate.split("/")
    return int(count), PERIODS[period]
