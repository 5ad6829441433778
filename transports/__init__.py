"""Ways of learning an order's status: each feeds observations to the core.

Modules here may import ``orderfsm.core``, ``orderfsm.errors`` and
``orderfsm.interface``; the core never imports them back.
"""
