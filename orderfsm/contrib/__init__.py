"""Fits for web frameworks: ``orderfsm.contrib.django``, ``orderfsm.contrib.flask``,
``orderfsm.contrib.fastapi``.  Each imports its framework; nothing else in orderfsm does."""
