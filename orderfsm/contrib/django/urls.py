"""``path("xsolla/", include("orderfsm.contrib.django.urls"))`` serves ``POST xsolla/webhook``."""

from __future__ import annotations

from django.urls import path

from orderfsm.contrib.django.views import webhook

app_name = "orderfsm"
urlpatterns = [path("webhook", webhook, name="webhook")]
