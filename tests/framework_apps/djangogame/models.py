from __future__ import annotations

from django.db import models


class Grant(models.Model):
    """No unique key on purpose: a grant written twice must show, not fail."""

    order_id = models.BigIntegerField()
    sku = models.CharField(max_length=200)
    attempt = models.IntegerField()
    """The claim's attempt, read inside the handler: only the claim's own transaction sees it."""


class Owned(models.Model):
    """A non-consumable item a player owns once (the unique key refuses a second)."""

    user = models.CharField(max_length=200)
    sku = models.CharField(max_length=200)

    class Meta:
        unique_together = (("user", "sku"),)
