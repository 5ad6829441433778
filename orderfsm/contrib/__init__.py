"""Fits for web frameworks: ``orderfsm.contrib.django`` and ``orderfsm.contrib.flask``
(FastAPI mounts ``transports.webhook.asgi_app`` as it is).  Each imports its framework;
nothing else in orderfsm does."""
