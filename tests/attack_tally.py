"""The hardening suites' tally: how many attacks each surface got and how each ended.

The fuzz tests and the kill-anywhere harness call :func:`record`; ``tests/conftest.py`` prints the
table at the end of the session. :func:`fuzz_settings` sizes every fuzz surface: a fixed,
derandomised example count by default, twenty times more (random) under
``pytest --hypothesis-profile=long``.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from hypothesis import HealthCheck, settings

#: ``max_examples`` of the ``long`` profile registered in conftest (how a test tells it is loaded).
LONG_EXAMPLES = 2000
LONG_FACTOR = 20

COUNTS: dict[str, Counter] = defaultdict(Counter)


def record(surface: str, outcome: str, count: int = 1) -> None:
    """Count ``count`` attacks on ``surface`` that ended with ``outcome`` (e.g. ``"exit 2"``)."""
    COUNTS[surface][outcome] += count


def summary_lines() -> list[str]:
    """One line per surface: its outcomes and their counts; then the total of all counts."""
    lines = []
    for surface in sorted(COUNTS):
        outcomes = ", ".join(f"{outcome}: {n}" for outcome, n in sorted(COUNTS[surface].items()))
        lines.append(f"{surface}: {outcomes}")
    if lines:
        fuzzed = sum(sum(c.values()) for s, c in COUNTS.items() if not s.startswith("kill"))
        kills = sum(c["killed"] for s, c in COUNTS.items() if s.startswith("kill"))
        lines.append(f"total: {fuzzed} fuzzed inputs and files, {kills} kills")
    return lines


def long_profile() -> bool:
    """True under ``--hypothesis-profile=long``."""
    return settings.default.max_examples == LONG_EXAMPLES


def fuzz_settings(examples: int) -> settings:
    """Settings of one fuzz surface: ``examples`` derandomised cases (x20, random, in the long profile)."""
    long = long_profile()
    return settings(
        max_examples=examples * LONG_FACTOR if long else examples,
        deadline=None,
        derandomize=not long,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
