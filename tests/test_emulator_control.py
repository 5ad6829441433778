"""The control surface: the Python client, plain HTTP+JSON, scripts, seeding."""

from __future__ import annotations

import base64
import json

import anyio
import httpx
import pytest

from transports.emulator import Emulator, EmulatorClient, EmulatorError
from transports.emulator.raw import raw_socket

pytestmark = pytest.mark.anyio


async def test_plain_http_json_drives_everything() -> None:
    async with Emulator(ping_interval=0) as emu, httpx.AsyncClient(base_url=emu.base_url) as http:
        info = (await http.get("/control/info")).json()
        assert info["ws_url"] == emu.ws_url and info["project_id"] == emu.project_id
        user = (await http.post("/control/users", json={"external_id": "zoe"})).json()
        assert user["external_id"] == "zoe" and user["token"].count(".") == 2
        order = (await http.post("/control/orders", json={"user": "zoe"})).json()["order_id"]
        status = await http.post(f"/control/orders/{order}/status", json={"status": "paid"})
        assert status.json()["publication"]["offset"] == 2
        view = (await http.get(f"/control/orders/{order}")).json()
        assert view["status"] == "paid" and view["user"] == "zoe"
        pubs = (await http.get("/control/publications", params={"user": "zoe"})).json()
        assert [p["data"]["status"] for p in pubs["publications"]] == ["new", "paid"]

        bad = await http.post("/control/orders", content=b"{not json")
        assert bad.status_code == 400 and "error" in bad.json()
        missing = await http.post("/control/orders/1/status", json={"status": "paid"})
        assert missing.status_code == 404
        conflict = await http.post("/control/users", json={"external_id": "zoe"})
        assert conflict.status_code == 409


async def test_emulator_client_on_a_base_url() -> None:
    async with Emulator(ping_interval=0) as emu:
        client = EmulatorClient(emu.base_url + "/")
        assert client.ws_url == emu.ws_url and client.api_url == emu.api_url
        user = await client.create_user()
        order = await client.create_order(user, status="paid", publish=False)
        assert (await emu.order(order))["status"] == "paid"
        assert await emu.publications(user) == []
        with pytest.raises(EmulatorError) as info:
            await client.create_order("nobody")
        assert info.value.status == 404


async def test_unreachable_emulator_is_a_typed_error() -> None:
    emu = Emulator(ping_interval=0)
    async with emu:
        url = emu.base_url
    with pytest.raises(EmulatorError):
        await EmulatorClient(url, timeout=2).info()


async def test_script_moves_an_order_through_statuses() -> None:
    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user("alice")
        order = await emu.create_order(user)
        async with raw_socket(emu.ws_url) as ws:
            await ws.connect(user.token, emu.project_id)
            start = anyio.current_time()
            await emu.run_script(order, [(0.1, "paid"), (0.1, "done")])
            seen = []
            for _ in range(2):
                seen.append((await ws.receive_one())["push"]["pub"]["data"]["status"])
            assert seen == ["paid", "done"]
            assert anyio.current_time() - start >= 0.2
        assert (await emu.order(order))["status"] == "done"
        with pytest.raises(EmulatorError):
            await emu.run_script(order, [(-1, "paid")])


async def test_publish_times_are_recorded_for_latency() -> None:
    import time

    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user("alice")
        before = time.time()
        order = await emu.create_order(user)
        pub = await emu.set_status(order, "paid")
        after = time.time()
        pubs = await emu.publications(user)
        assert pub is not None and pubs[-1] == pub
        assert before <= pubs[0].published_at <= pub.published_at <= after


async def run_world(seed: int) -> tuple[str, str, str, int]:
    async with Emulator(ping_interval=0.5, seed=seed) as emu:
        user = await emu.create_user("alice")
        order = await emu.create_order(user)
        async with raw_socket(emu.ws_url) as ws:
            reply = (await ws.connect(user.token, emu.project_id))["connect"]
        claims = json.loads(base64.urlsafe_b64decode(user.token.split(".")[1] + "=="))
        return (
            claims["jti"],
            reply["client"],
            reply["subs"][user.channel]["epoch"],
            order,
        )


async def test_seeded_runs_replay_identically() -> None:
    first = await run_world(42)
    assert await run_world(42) == first
    assert (await run_world(43))[1:3] != first[1:3]


async def test_counters_for_benchmarks() -> None:
    async with Emulator(ping_interval=0) as emu:
        alice = await emu.create_user("alice")
        async with raw_socket(emu.ws_url) as one, raw_socket(emu.ws_url) as two:
            await one.connect(alice.token, emu.project_id)
            await two.connect(alice.token, emu.project_id)
            with anyio.fail_after(5):
                await emu.wait_connected(alice, count=2)
            stats = await emu.stats()
            assert stats.connects == 2 and stats.open_connections == {"alice": 2}
        with anyio.fail_after(5):
            while (await emu.stats()).open_connections:  # noqa: ASYNC110 (remote state)
                await anyio.sleep(0.02)


def test_sync_context_manager_for_session_fixtures() -> None:
    with Emulator(ping_interval=0) as emu:
        assert emu.base_url.startswith("http://127.0.0.1:")
        with httpx.Client() as http:
            assert http.get(emu.control_url + "/info").status_code == 200
    with pytest.raises(RuntimeError):
        emu.start()


async def test_no_thread_outlives_the_emulator() -> None:
    import threading

    emu = Emulator(ping_interval=0.2)
    async with emu:
        user = await emu.create_user("alice")
        async with raw_socket(emu.ws_url) as ws:
            await ws.connect(user.token, emu.project_id)
            await emu.stall_connections(user)
        names = {t.name for t in threading.enumerate()}
        assert "orderfsm-emulator" in names
    assert "orderfsm-emulator" not in {t.name for t in threading.enumerate()}
