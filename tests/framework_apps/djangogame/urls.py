from __future__ import annotations

from django.urls import include, path

urlpatterns = [path("xsolla/", include("orderfsm.contrib.django.urls"))]
