"""What the tracker (and the webhook receiver) have been doing, as plain records.

``Tracker.stats()`` returns a :class:`TrackerStats`.  The exporters are
optional and imported only when asked for: :mod:`orderfsm.metrics.prometheus`
(``pip install 'orderfsm[prometheus]'``) and :mod:`orderfsm.metrics.otel`
(``pip install 'orderfsm[otel]'``).  Importing this package imports neither.
"""

from orderfsm.metrics.records import OUTCOMES, UNSETTLED, TrackerStats

__all__ = ["OUTCOMES", "UNSETTLED", "TrackerStats"]
