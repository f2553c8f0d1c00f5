"""Batch and idempotent publishing, and the Prometheus metrics, against a real hub."""
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from conftest import Herald


def events(url: str) -> list:
    return requests.get(f"{url}/api/events?limit=1000", timeout=10).json()


def test_batch_is_all_or_nothing(herald):
    url = f"{herald.url}/api/events:batch"
    good = [{"subject": f"hub.batch.e{i}", "payload": {"i": i}} for i in range(100)]
    response = requests.post(url, json={"events": good}, timeout=10)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["count"] == 100
    assert [r["seq"] for r in body["results"]] == list(range(1, 101))

    mixed = good[:3] + [{"subject": "hub..bad", "payload": {}}, {"subject": "hub.ok", "payload": [1]}, {"payload": {}}]
    response = requests.post(url, json=mixed, timeout=10)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_batch"
    assert [(i["index"], i["code"]) for i in error["items"]] == [
        (3, "invalid_subject"),
        (4, "invalid_payload"),
        (5, "invalid_subject"),
    ]
    assert len(events(herald.url)) == 100, "a rejected batch stores nothing"

    too_many = [{"subject": "hub.x", "payload": {}}] * 1001
    assert requests.post(url, json=too_many, timeout=10).status_code == 422
    assert requests.post(url, json={"events": []}, timeout=10).status_code == 422
    assert requests.post(url, data=b"[", timeout=10).status_code == 400


def test_idempotent_publish_under_a_race(herald):
    event_id = str(uuid.uuid4())
    body = {"id": event_id, "subject": "hub.idem.x", "payload": {"n": 1}}

    def publish(_):
        return requests.post(f"{herald.url}/api/events", json=body, timeout=10)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(publish, range(32)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1 and statuses.count(200) == 31, statuses
    assert {r.json()["seq"] for r in responses} == {1}
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    assert len(events(herald.url)) == 1


def test_idempotency_survives_a_restart():
    hub = Herald()
    event_id = str(uuid.uuid4())
    body = {"id": event_id, "subject": "hub.idem.restart", "payload": {}}
    first = requests.post(f"{hub.url}/api/events", json=body, timeout=10)
    assert first.status_code == 201
    data_dir = hub.dir
    hub.process.terminate()
    hub.process.wait(timeout=10)
    # Start a new hub on the same data file.
    import subprocess
    import threading

    from conftest import BINARY

    process = subprocess.Popen(
        [BINARY, "serve", "--listen", "127.0.0.1:0", "--data", f"{data_dir.name}/herald.db"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(process.stdout.readline()))
        reader.start()
        reader.join(timeout=20)
        url = line[0].strip().rsplit(" ", 1)[-1]
        again = requests.post(f"{url}/api/events", json=body, timeout=10)
        assert again.status_code == 200 and again.json()["duplicate"] is True
        assert again.json()["seq"] == first.json()["seq"]
    finally:
        process.terminate()
        process.wait(timeout=10)
        data_dir.cleanup()


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def test_metrics_move_as_events_flow(herald):
    before = requests.get(f"{herald.url}/metrics", timeout=10)
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    stored_before = metric(before.text, "herald_events_published_total", result="stored")

    for i in range(10):
        assert requests.post(f"{herald.url}/api/events", json={"subject": "hub.m.x", "payload": {"i": i}}, timeout=10).ok
    requests.post(f"{herald.url}/api/events", json={"subject": "hub..x", "payload": {}}, timeout=10)

    after = requests.get(f"{herald.url}/metrics", timeout=10).text
    assert metric(after, "herald_events_published_total", result="stored") == stored_before + 10
    assert metric(after, "herald_log_head_seq") == 10
    assert metric(after, "herald_store_size_bytes") > 0
    assert metric(after, "herald_http_requests_total", method="POST", route="/api/events", status="201") == 10
    assert metric(after, "herald_http_requests_total", method="POST", route="/api/events", status="422") == 1
    assert metric(after, "herald_publish_duration_seconds_count") >= 10
    assert metric(after, "herald_commit_batch_events_count") >= 1
    assert metric(after, "herald_commit_duration_seconds_bucket", le="+Inf") >= 1
