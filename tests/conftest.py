from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

# Hypothesis times each example (a 200 ms deadline) and its data generation
# (the too_slow health check) by the wall clock: on a loaded 2-core machine
# those fail tests whose properties hold.  What a property proves does not
# depend on speed, so neither check is kept; speed is for benchmarks/.
settings.register_profile("orderfsm", deadline=None, suppress_health_check=[HealthCheck.too_slow])
# For mutation runs (``ORDERFSM_HYPOTHESIS=mutation mutmut run``, README,
# "Developing"): a failing example is enough to kill a mutant; shrinking it
# would only cost time.
settings.register_profile(
    "mutation",
    parent=settings.get_profile("orderfsm"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.load_profile(os.environ.get("ORDERFSM_HYPOTHESIS", "orderfsm"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every ``@pytest.mark.anyio`` test runs once on asyncio and once on trio."""
    return str(request.param)
