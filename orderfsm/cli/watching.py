"""What ``orderfsm watch`` runs once its options are judged: a tracker, optionally a
webhook receiver and a metrics endpoint, and a view of the orders."""

from __future__ import annotations

import argparse
import contextlib
import logging

from orderfsm.cli.failures import listening
from orderfsm.cli.follow import Misconfiguration, View, follow
from orderfsm.cli.views import open_view
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.tracker import Tracker

logger = logging.getLogger("orderfsm.cli")


class Watch:
    def __init__(self, args: argparse.Namespace, token: str | None, secret: str | None):
        self.args = args
        self.token = token
        self.secret = secret
        self.order_ids = list(dict.fromkeys(args.order_id))  # each once, in the order given

    async def run(self) -> int:
        args = self.args
        count = len(self.order_ids)
        orders = f"{count} order{'s' if count > 1 else ''}"
        title = f"orderfsm watch: {orders} of project {args.project_id}"
        with open_view(as_json=args.json, order_ids=self.order_ids, title=title) as view:
            misconfigured = Misconfiguration(view)
            async with contextlib.AsyncExitStack() as stack:
                tracker = await stack.enter_async_context(
                    Tracker(
                        project_id=args.project_id,
                        token=self.token,
                        user_id=args.user_id,
                        ws_url=args.ws_url,
                        api_url=args.api_url,
                        transports=args.transports,
                        policy=DefaultPolicy(
                            poll_interval=args.poll_interval,
                            deadline=args.timeout or None,
                            expired_grace=args.expired_grace,
                        ),
                        until=args.until,
                        not_found_grace=args.not_found_grace,
                        journal=args.journal,
                        journal_poll=args.journal_poll,
                        fetch_details=self.token is not None,
                        on_report=misconfigured.report,
                    )
                )
                if self.secret is not None:
                    await self._serve_webhooks(stack, tracker, view)
                if args.metrics_port is not None:
                    await self._serve_metrics(stack, tracker, view)
                return await follow(tracker, self.order_ids, view, misconfigured)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _serve_webhooks(
        self, stack: contextlib.AsyncExitStack, tracker: Tracker, view: View
    ) -> None:
        from transports.webhook import WebhookReceiver, serve_receiver

        assert self.secret is not None
        host, port = self.args.webhook_host, self.args.webhook_port
        receiver = WebhookReceiver(self.secret, sink=tracker)
        with listening("the webhook receiver", host, port):
            url = await stack.enter_async_context(serve_receiver(receiver, host=host, port=port))
        view.note(self.order_ids[0], f"webhooks: {url}")

    async def _serve_metrics(
        self, stack: contextlib.AsyncExitStack, tracker: Tracker, view: View
    ) -> None:
        from prometheus_client import CollectorRegistry

        from orderfsm.metrics.prometheus import register_tracker, serve_metrics

        registry = CollectorRegistry()
        register_tracker(tracker, registry)
        port = self.args.metrics_port
        with listening("the metrics endpoint", "127.0.0.1", port):
            url = await stack.enter_async_context(serve_metrics(registry, port=port))
        view.note(self.order_ids[0], f"metrics: {url}")
