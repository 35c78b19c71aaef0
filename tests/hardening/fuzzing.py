"""The one way the hardening tests run a hypothesis property with the ``fuzz_examples`` fixture."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings


def fuzz(examples: int, *strategies):
    """Run the decorated property now, under hypothesis, with ``examples`` examples.

    (``@given`` on the test function itself would clash with the function-scoped
    ``fuzz_examples`` fixture.) The deadline flags a slow example; pytest-timeout catches a hang.
    """
    def run(prop):
        settings(max_examples=examples, deadline=timedelta(seconds=5), print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(given(*strategies)(prop))()
    return run
