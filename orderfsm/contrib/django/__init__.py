"""Xsolla webhooks in a Django project, on the journal in the project's own database.

1. ``pip install 'orderfsm[django]'`` (and ``'orderfsm[postgres]'`` on PostgreSQL).
2. ``settings.ORDERFSM_WEBHOOK = {"SECRET": ..., "TRANSACTIONAL": "game.hooks.grant"}``
   (see :mod:`orderfsm.contrib.django.conf`).
3. ``urlpatterns += [path("xsolla/", include("orderfsm.contrib.django.urls"))]``.

``TRANSACTIONAL`` names ``def grant(notification) -> None``, which writes with
the ORM: its writes commit in the same transaction as the journal's claim and
answer (exactly once, whatever instant a worker dies); ``HANDLER`` names a
plain function run with no transaction held (at least once).  Not in
``INSTALLED_APPS``: the journal makes its own tables.
"""
