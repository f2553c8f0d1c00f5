"""A real CloudEvents SDK client (the `cloudevents` package) publishes to Herald in all
three HTTP binding modes and reads its events back losslessly."""
import json
from datetime import datetime, timezone

import requests
from cloudevents.core.bindings.http import HTTPMessage, from_structured, to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

FORMAT = JSONFormat()


def read_back(url: str, event_id: str) -> CloudEvent:
    response = requests.get(
        f"{url}/api/events/{event_id}", headers={"Accept": "application/cloudevents+json"}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/cloudevents+json")
    return from_structured(HTTPMessage(headers=dict(response.headers), body=response.content), FORMAT)


def assert_same(sent: CloudEvent, got: CloudEvent) -> None:
    assert got.get_attributes() == sent.get_attributes()
    assert got.get_data() == sent.get_data()


def test_structured_mode_round_trip(herald):
    event = CloudEvent(
        {
            "type": "com.example.order.created",
            "source": "https://example.com/orders",
            "subject": "order/42",
            "datacontenttype": "application/json",
            "dataschema": "https://example.com/schemas/order",
            "time": datetime(2025, 11, 3, 12, 0, 0, 123456, tzinfo=timezone.utc),
            "tenantid": "acme",
            "priority": 7,
            "urgent": True,
        },
        {"order_id": 42, "items": [1, 2, 3]},
    )
    message = to_structured(event, FORMAT)
    response = requests.post(f"{herald.url}/api/events", headers=message.headers, data=message.body, timeout=10)
    assert response.status_code == 201, response.text
    answer = response.json()
    assert_same(event, read_back(herald.url, answer["event_id"]))

    # The same (source, id) again is a duplicate: same Herald event, nothing new stored.
    again = requests.post(f"{herald.url}/api/events", headers=message.headers, data=message.body, timeout=10)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["event_id"] == answer["event_id"]
    assert len(requests.get(f"{herald.url}/api/events", timeout=10).json()) == 1

    # The Herald view of the same event: subject from `type`, payload = data.
    stored = requests.get(f"{herald.url}/api/events/{answer['event_id']}", timeout=10).json()
    assert stored["subject"] == "com.example.order.created"
    assert stored["payload"] == {"order_id": 42, "items": [1, 2, 3]}
    assert stored["cloudevent"]["tenantid"] == "acme"


def test_binary_mode_round_trip(herald):
    event = CloudEvent(
        {
            "type": "com.example.order.shipped",
            "source": "/orders",
            "datacontenttype": "application/json",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "heraldsubject": "hub.local-hub.order.shipped",
        },
        {"order_id": 42, "carrier": "post"},
    )
    message = to_binary(event, FORMAT)
    assert any(k.lower() == "ce-specversion" for k in message.headers)
    response = requests.post(f"{herald.url}/api/events", headers=message.headers, data=message.body, timeout=10)
    assert response.status_code == 201, response.text
    event_id = response.json()["event_id"]
    assert_same(event, read_back(herald.url, event_id))
    stored = requests.get(f"{herald.url}/api/events/{event_id}", timeout=10).json()
    assert stored["subject"] == "hub.local-hub.order.shipped", "the heraldsubject extension names the subject"


def test_binary_mode_text_and_bytes(herald):
    text = CloudEvent({"type": "com.example.note", "source": "/notes", "datacontenttype": "text/plain"}, "héllo, world")
    message = to_binary(text, FORMAT)
    response = requests.post(f"{herald.url}/api/events", headers=message.headers, data=message.body, timeout=10)
    assert response.status_code == 201, response.text
    got = read_back(herald.url, response.json()["event_id"])
    assert got.get_data() == "héllo, world"
    assert got.get_attributes()["datacontenttype"] == "text/plain"

    blob = bytes(range(256))
    binary = CloudEvent(
        {"type": "com.example.blob", "source": "/blobs", "datacontenttype": "application/octet-stream"}, blob
    )
    message = to_binary(binary, FORMAT)
    response = requests.post(f"{herald.url}/api/events", headers=message.headers, data=message.body, timeout=10)
    assert response.status_code == 201, response.text
    got = read_back(herald.url, response.json()["event_id"])
    assert got.get_data() == blob


def test_batch_mode_round_trip(herald):
    events = [
        CloudEvent({"type": "com.example.batch.item", "source": "/batch", "datacontenttype": "application/json"}, {"n": n})
        for n in range(5)
    ]
    events.append(CloudEvent({"type": "com.example.batch.bytes", "source": "/batch"}, b"\x00\x01raw"))
    body = "[" + ",".join(FORMAT.write(e).decode() for e in events) + "]"
    response = requests.post(
        f"{herald.url}/api/events",
        headers={"Content-Type": "application/cloudevents-batch+json"},
        data=body.encode(),
        timeout=10,
    )
    assert response.status_code == 201, response.text
    results = response.json()["results"]
    assert [r["seq"] for r in results] == list(range(1, 7))
    for sent, result in zip(events, results):
        assert_same(sent, read_back(herald.url, result["event_id"]))

    # Reading the log as a CloudEvents batch gives the same events back.
    batch = requests.get(
        f"{herald.url}/api/events?limit=10", headers={"Accept": "application/cloudevents-batch+json"}, timeout=10
    )
    assert batch.headers["content-type"].startswith("application/cloudevents-batch+json")
    assert [item["id"] for item in batch.json()] == [e.get_attributes()["id"] for e in events]


def test_invalid_cloudevents_are_rejected_and_not_stored(herald):
    url = f"{herald.url}/api/events"
    structured = {"Content-Type": "application/cloudevents+json"}
    cases = [
        ({"specversion": "0.3", "id": "1", "source": "/s", "type": "com.x"}, "specversion"),
        ({"specversion": "1.0", "source": "/s", "type": "com.x"}, "id"),
        ({"specversion": "1.0", "id": "1", "type": "com.x"}, "source"),
        ({"specversion": "1.0", "id": "1", "source": "/s"}, "type"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "com.x", "time": "yesterday"}, "time"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "not a subject"}, "heraldsubject"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "com.x", "Bad-Ext": 1}, "extension"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "com.x", "data": {}, "data_base64": "AA=="}, "data"),
        # datacontenttype: "If present, MUST adhere to the format specified in RFC 2046".
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "com.x", "datacontenttype": "xyz"}, "datacontenttype"),
        # String: "the "control characters" in the ranges U+0000-U+001F and U+007F-U+009F".
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "com.x", "subject": "a\u0001b"}, "subject"),
        # dataschema is a `URI`: "Absolute uniform resource identifier."
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "com.x", "dataschema": "/relative/schema"}, "dataschema"),
    ]
    for body, word in cases:
        response = requests.post(url, headers=structured, data=json.dumps(body), timeout=10)
        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_cloudevent"
        assert word in error["message"], (word, error)

    binary = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "Content-Type": "application/json"}
    response = requests.post(url, headers=binary, data=b"{}", timeout=10)
    assert response.status_code == 422 and "type" in response.json()["error"]["message"]

    batch = [
        {"specversion": "1.0", "id": "ok", "source": "/s", "type": "com.x"},
        {"specversion": "1.0", "id": "bad", "source": "/s"},
    ]
    response = requests.post(
        url, headers={"Content-Type": "application/cloudevents-batch+json"}, data=json.dumps(batch), timeout=10
    )
    assert response.status_code == 422
    assert [item["index"] for item in response.json()["error"]["items"]] == [1]
    assert requests.get(url, timeout=10).json() == [], "nothing of a rejected request is stored"


def test_plain_events_read_back_as_cloudevents(herald):
    response = requests.post(
        f"{herald.url}/api/events", json={"subject": "hub.local-hub.project.created", "payload": {"id": 1}}, timeout=10
    )
    answer = response.json()
    event = read_back(herald.url, answer["event_id"])
    attributes = event.get_attributes()
    assert attributes["id"] == answer["event_id"]
    assert attributes["type"] == "hub.local-hub.project.created"
    assert attributes["source"] == "/herald/local-hub"
    assert attributes["correlationid"] == answer["correlation_id"]
    assert event.get_data() == {"id": 1}


def test_seed_004_publish_route(herald):
    response = requests.post(
        f"{herald.url}/events/publish?source=https://anumate.com/test",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"event_type": "com.anumate.test.event", "data": {"message": "Hello World"}, "tenant_id": "test-tenant"}),
        timeout=10,
    )
    assert response.status_code == 201, response.text
    event = read_back(herald.url, response.json()["event_id"])
    assert event.get_attributes()["type"] == "com.anumate.test.event"
    assert event.get_attributes()["source"] == "https://anumate.com/test"
    assert event.get_attributes()["tenantid"] == "test-tenant"
    assert event.get_data() == {"message": "Hello World"}


def test_long_extension_names_and_awkward_header_values_round_trip(herald):
    # "MUST be at least one character in length, and SHOULD NOT exceed 20 characters":
    # advice, so the SDK (which checks only [a-z0-9]) and Herald both take longer names.
    event = CloudEvent(
        {
            "type": "com.example.order.noted",
            "source": "/orders",
            "subject": 'a "quoted" 100% \u20ac subject',
            "datacontenttype": "application/json",
            "averyveryverylongextensionname": "kept",
        },
        {"n": 1},
    )
    for message in (to_binary(event, FORMAT), to_structured(event, FORMAT)):
        response = requests.post(f"{herald.url}/api/events", headers=message.headers, data=message.body, timeout=10)
        assert response.status_code in (200, 201), response.text
        assert_same(event, read_back(herald.url, response.json()["event_id"]))


def test_quoted_binary_header_values_are_unquoted(herald):
    # HTTP binding §3.1.3.2: "any HTTP header value MUST first be unescaped with respect to
    # double-quoted strings, as described in RFC7230, section 3.2.6. A single round of
    # percent-decoding MUST then be performed".
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "quoted-1",
        "ce-source": "/legacy-producer",
        "ce-type": "com.example.legacy",
        "ce-subject": '"hello world"',
        "ce-tenantid": '"say \\"hi\\" %E2%82%AC"',
        "Content-Type": "application/json",
    }
    response = requests.post(f"{herald.url}/api/events", headers=headers, data=b"{}", timeout=10)
    assert response.status_code == 201, response.text
    attributes = read_back(herald.url, response.json()["event_id"]).get_attributes()
    assert attributes["subject"] == "hello world"
    assert attributes["tenantid"] == 'say "hi" \u20ac'


def test_empty_batch_is_accepted(herald):
    # JSON format §4.3: "An example of an empty batch of CloudEvents (typically used in a
    # response, but also valid in a request): []".
    response = requests.post(
        f"{herald.url}/api/events", headers={"Content-Type": "application/cloudevents-batch+json"}, data=b"[]", timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [], "count": 0}
    assert requests.get(f"{herald.url}/api/events", timeout=10).json() == []


def test_explicit_null_data_reads_back(herald):
    # JSON format §3.1.1: "the `data` member MAY have a value of `null`, representing an
    # explicit `null` payload as distinct from the absence of the `data` member."
    structured = {"Content-Type": "application/cloudevents+json"}
    ids = {}
    for name, extra in (("null", {"data": None}), ("absent", {})):
        body = {"specversion": "1.0", "id": name, "source": "/s", "type": "com.example.data", **extra}
        response = requests.post(f"{herald.url}/api/events", headers=structured, data=json.dumps(body), timeout=10)
        assert response.status_code == 201, response.text
        ids[name] = response.json()["event_id"]
    accept = {"Accept": "application/cloudevents+json"}
    with_null = requests.get(f"{herald.url}/api/events/{ids['null']}", headers=accept, timeout=10).json()
    without = requests.get(f"{herald.url}/api/events/{ids['absent']}", headers=accept, timeout=10).json()
    assert "data" in with_null and with_null["data"] is None
    assert "data" not in without
    assert read_back(herald.url, ids["null"]).get_data() is None


def test_poison_data_is_refused(herald):
    # RFC 8259 §9: "An implementation may set limits on the maximum depth of nesting" and
    # "on the range and precision of numbers"; §4: "The names within an object SHOULD be
    # unique."
    head = '{"specversion": "1.0", "id": "p", "source": "/s", "type": "com.example.poison", "data": '
    for data, word in (
        ("[" * 101 + "]" * 101, "deeper than 100"),
        ('{"n": 1e400}', "1e400"),
        ('{"s": "\\ud800"}', "surrogate"),
        ('{"k": 1, "k": 2}', "twice"),
    ):
        response = requests.post(
            f"{herald.url}/api/events",
            headers={"Content-Type": "application/cloudevents+json"},
            data=(head + data + "}").encode(),
            timeout=10,
        )
        assert response.status_code == 422, (data[:40], response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_cloudevent" and word in error["message"], error
    assert requests.get(f"{herald.url}/api/events", timeout=10).json() == []
