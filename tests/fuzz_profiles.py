"""Hypothesis profiles of the fuzz tests (tests/test_fuzz_*.py), chosen by HYPOTHESIS_PROFILE.

``ci`` (the default): a fixed set of examples (derandomized: the same cases every run, no
example database), sized so that both fuzz modules together take well under a minute on
two shared cores. ``long``: the campaign docs/testing.md reports, random and much longer
(``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_fuzz_grid.py
tests/test_fuzz_items.py``).
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("long", max_examples=1000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
