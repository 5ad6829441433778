"""Full-jitter reconnect delay, as a pure function of the attempt and one random sample.

Same formula as centrifuge-js ``utils.backoff`` (and centrifuge-python
``_backoff``): the ceiling doubles with each failed attempt, and the delay is
drawn uniformly below it, so a crowd of clients cut off together does not come
back in lockstep.  The random sample is an argument so the function is
deterministic and tests need no seeding.
"""

from __future__ import annotations

from transports.centrifuge.errors import ConfigError

MAX_STEP = 31
"""Past this the doubling would only overflow; the ceiling is ``max_delay`` long before."""


def full_jitter(attempt: int, sample: float, *, min_delay: float, max_delay: float) -> float:
    """The delay before reconnect attempt number ``attempt`` (0 after a success).

    ``sample`` is a uniform draw from [0, 1].  The result lies in
    [``min_delay``, ``max_delay``]: ``min_delay`` plus a jitter that is at most
    ``min(max_delay, min_delay * 2**attempt)``.
    """
    if not 0.0 <= sample <= 1.0:
        raise ConfigError(f"sample must be in [0, 1], got {sample!r}")
    if not 0.0 <= min_delay <= max_delay:
        raise ConfigError(f"need 0 <= min_delay <= max_delay, got {min_delay}, {max_delay}")
    step = min(max(attempt, 0), MAX_STEP)
    ceiling = min(max_delay, min_delay * float(2**step))
    return min(max_delay, min_delay + sample * ceiling)
