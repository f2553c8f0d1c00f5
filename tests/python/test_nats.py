"""Herald on NATS, seen from a non-Rust client (nats-py): the relay's messages in
JetStream, their headers, and a message published by nats-py ingested by the bridge.

Each test starts its own `nats-server -js` on a free loopback port.
"""
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import nats
import pytest
import requests

from conftest import Herald


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def nats_server():
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not installed (scripts/test.sh installs it)")
    port = free_port()
    store = tempfile.TemporaryDirectory(prefix="herald-py-nats-")
    process = subprocess.Popen(
        ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store.name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}"
    process.kill()
    process.wait()
    store.cleanup()


def wait_relayed(hub: Herald, count: int) -> None:
    deadline = time.time() + 15
    while time.time() < deadline:
        relay = requests.get(f"{hub.url}/health/nats").json().get("relay", {})
        if relay.get("acked_seq", 0) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"relay did not reach seq {count}: {relay}")


def test_nats_py_reads_every_relayed_event_with_headers(nats_server):
    hub = Herald("--nats-url", nats_server, "--hub-id", "py-hub")
    try:
        published = []
        for i in range(25):
            correlation = str(uuid.uuid4())
            r = requests.post(
                f"{hub.url}/api/events",
                json={"subject": f"hub.py-hub.task.{i % 3}", "payload": {"i": i}, "correlation_id": correlation},
            )
            assert r.status_code == 201, r.text
            published.append(r.json())
        wait_relayed(hub, 25)

        async def read_stream():
            nc = await nats.connect(nats_server)
            js = nc.jetstream()
            sub = await js.pull_subscribe("hub.py-hub.>", durable=None, stream="HERALD")
            messages = []
            while len(messages) < 25:
                messages.extend(await sub.fetch(25 - len(messages), timeout=5))
            await nc.close()
            return messages

        messages = asyncio.run(read_stream())
        for message, sent in zip(messages, published):
            body = json.loads(message.data)
            assert body["id"] == sent["event_id"]
            assert body["seq"] == sent["seq"]
            assert message.headers["Nats-Msg-Id"] == sent["event_id"]
            assert message.headers["Correlation-ID"] == sent["correlation_id"]
            assert message.headers["Herald-Hub"] == "py-hub"
            assert message.headers["Herald-Seq"] == str(sent["seq"])
            assert message.headers["Herald-Origin-Hub"] == "py-hub"
            assert message.subject == body["subject"]
        assert [json.loads(m.data)["seq"] for m in messages] == list(range(1, 26))
    finally:
        hub.stop()


def test_a_nats_py_message_becomes_an_event(nats_server):
    hub = Herald("--nats-url", nats_server)
    try:
        async def publish():
            nc = await nats.connect(nats_server)
            js = nc.jetstream()
            await js.publish(
                "hub.global.sync.registry-update",
                json.dumps({"registry": "v3"}).encode(),
                headers={"Nats-Msg-Id": "py-1", "Correlation-ID": "py-trace"},
            )
            await nc.close()

        asyncio.run(publish())
        deadline = time.time() + 10
        events = []
        while time.time() < deadline and not events:
            events = requests.get(f"{hub.url}/api/events", params={"subject": "hub.global.sync.>"}).json()
            time.sleep(0.05)
        assert len(events) == 1, events
        event = events[0]
        assert event["payload"] == {"registry": "v3"}
        assert event["origin"]["hub_id"] == "nats"
        assert event["subject"] == "hub.global.sync.registry-update"
    finally:
        hub.stop()


def test_a_message_the_bridge_cannot_ingest_is_kept_as_a_dead_letter(nats_server):
    """nats-py publishes a subject with a right-to-left override (NATS takes it, Herald
    refuses such subjects) and `hub.py.foo*` (a literal subject in NATS: `*` is a wildcard
    only as a whole token). The first is kept as a dead letter, acknowledged, and can be
    discarded; the second is stored."""
    hub = Herald("--nats-url", nats_server, "--presence-interval-secs", "0")
    disguised = "hub.py.invoice\u202efdp.exe"
    try:
        async def publish():
            nc = await nats.connect(nats_server)
            js = nc.jetstream()
            deadline = time.time() + 10
            while True:
                try:
                    await js.stream_info("HERALD")
                    break
                except Exception:
                    if time.time() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            await js.publish(disguised, b"\xff\x00binary", headers={"X-Trace": "py"})
            await js.publish("hub.py.foo*", json.dumps({"ok": True}).encode())
            await nc.close()

        asyncio.run(publish())
        deadline = time.time() + 10
        letters = []
        while time.time() < deadline and not letters:
            letters = requests.get(f"{hub.url}/api/bridge/dead-letters").json()["dead_letters"]
            time.sleep(0.05)
        assert len(letters) == 1, letters
        letter = letters[0]
        assert letter["subject"] == disguised
        assert "U+202E" in letter["reason"]
        assert letter["body_base64"] == "/wBiaW5hcnk="
        assert {"name": "X-Trace", "value": "py"} in letter["headers"]

        events = requests.get(f"{hub.url}/api/events", params={"subject": "hub.py.foo*"}).json()
        deadline = time.time() + 10
        while time.time() < deadline and not events:
            time.sleep(0.05)
            events = requests.get(f"{hub.url}/api/events", params={"subject": "hub.py.foo*"}).json()
        assert [e["subject"] for e in events] == ["hub.py.foo*"]

        r = requests.delete(f"{hub.url}/api/bridge/dead-letters/{letter['id']}")
        assert r.status_code == 204
        r = requests.delete(f"{hub.url}/api/bridge/dead-letters/{letter['id']}")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "dead_letter_not_found"
    finally:
        hub.stop()
