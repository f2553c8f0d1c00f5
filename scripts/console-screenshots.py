#!/usr/bin/env python3
"""Screenshots of the web console for the docs, saved as docs/console/*.png.

Starts a hub from the built binary ($HERALD_BIN, or target/debug/herald) with demo data:
a steady flow of order events (each order's events share a correlation id), consumers
that fall behind or dead-letter, and two webhook rules: one whose receiver takes every
event, one whose receiver is down. Then it opens each page in headless Chromium at
1,280 px, and two at phone width (390 px, emulated).

    cargo build -p herald
    target/pyenv/bin/python scripts/console-screenshots.py

(target/pyenv is the venv scripts/test.sh makes, with selenium; Chromium and its driver
are Debian's `chromium` and `chromium-driver`.) Takes about a minute and a half: the
charts need samples.
"""
import http.server
import pathlib
import random
import sys
import threading
import time
import uuid

import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

from conftest import Herald  # noqa: E402
from test_console import make_browser  # noqa: E402

OUT = ROOT / "docs" / "console"
ADMIN = "admin-secret-for-console-screenshots"


def post(hub: Herald, path: str, body: dict, method: str = "POST") -> dict:
    response = requests.request(method, hub.url + path, json=body, timeout=10)
    assert response.status_code < 300, (path, response.status_code, response.text)
    return response.json() if response.content else {}


def order_flow(hub: Herald, stop: threading.Event) -> None:
    """Orders placed, paid and shipped, each with its own correlation id."""
    rng = random.Random(7)
    n = 1000
    while not stop.is_set():
        n += 1
        correlation = str(uuid.uuid4())
        order = {"order_id": f"o-{n}", "amount": round(rng.uniform(5, 400), 2), "currency": "EUR"}
        steps = [
            ("orders.created", order | {"items": rng.randint(1, 5)}),
            ("inventory.reserved", {"order_id": order["order_id"], "warehouse": rng.choice(["ams-1", "fra-2"])}),
            ("payments.captured", {"order_id": order["order_id"], "amount": order["amount"], "method": rng.choice(["card", "sepa"])}),
            ("orders.shipped", {"order_id": order["order_id"], "carrier": rng.choice(["dhl", "ups", "postnl"])}),
        ]
        for subject, payload in steps:
            if stop.is_set():
                return
            try:
                requests.post(hub.url + "/api/events", timeout=5, json={
                    "subject": f"hub.local-hub.{subject}",
                    "payload": payload,
                    "correlation_id": correlation,
                    "origin": {"service": subject.split(".")[0] + "-service"},
                })
            except requests.RequestException:
                return
            time.sleep(rng.uniform(0.01, 0.08))


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver that takes everything."""

    def do_POST(self) -> None:  # noqa: N802 (the handler's name)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def demo_data(hub: Herald, receiver: str) -> None:
    post(hub, "/api/consumers/billing", {"filter_subjects": ["hub.local-hub.orders.>"], "description": "Invoices every order"}, "PUT")
    post(hub, "/api/consumers/shipping", {"filter_subjects": ["hub.local-hub.orders.shipped"], "max_deliver": 1, "ack_wait_ms": 30000}, "PUT")
    post(hub, "/api/consumers/analytics", {"filter_subjects": ["hub.local-hub.>"], "max_ack_pending": 5000}, "PUT")
    post(hub, "/api/rules", {
        "id": "orders-webhook",
        "subject_pattern": "hub.local-hub.payments.captured",
        "description": "Notifies the ledger (its receiver is down)",
        "action": {"type": "webhook", "url": "http://127.0.0.1:9/ledger", "max_attempts": 1},
    })
    post(hub, "/api/rules", {
        "id": "search-indexer",
        "subject_pattern": "hub.local-hub.orders.>",
        "description": "Keeps the order search index fresh",
        "action": {"type": "webhook", "url": f"{receiver}/index", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
    })


def dead_letter_some(hub: Herald) -> None:
    """The shipping service fails on a few messages: with max_deliver 1, a NAK is final."""
    reasons = ["carrier API timeout after 30 s", "address failed validation: missing postcode", "label printer offline"]
    fetched = post(hub, "/api/consumers/shipping/fetch", {"batch": 8})["messages"]
    for i, message in enumerate(fetched):
        if i < 5:
            post(hub, "/api/consumers/shipping/nak", {"ack_ids": [message["ack_id"]], "reason": reasons[i % 3]})
        else:
            post(hub, "/api/consumers/shipping/ack", {"ack_ids": [message["ack_id"]]})
    # The billing consumer works through part of its backlog.
    billing = post(hub, "/api/consumers/billing/fetch", {"batch": 40})["messages"]
    post(hub, "/api/consumers/billing/ack", {"ack_ids": [m["ack_id"] for m in billing[:30]]})


def shoot(driver, name: str, height: int | None = None, phone: bool = False) -> None:
    """Saves the page, as tall as its content (or `height`) up to 2,600 px."""
    time.sleep(0.4)
    full = driver.execute_script("return document.documentElement.scrollHeight")
    tall = min(max(height or full, 700), 2600)
    # The viewport itself (a window's size includes its frame; and phones are narrower
    # than Chromium's smallest window).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 390 if phone else 1280, "height": tall,
        "deviceScaleFactor": 2 if phone else 1, "mobile": phone})
    time.sleep(0.3)
    width = driver.execute_script("return window.innerWidth")
    path = OUT / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"wrote {path.relative_to(ROOT)} ({width} px wide)")


def desktop(driver) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})


def wait(driver, seconds: float = 10):
    return WebDriverWait(driver, seconds, poll_frequency=0.05)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    hub = Herald()
    stop = threading.Event()
    flow = threading.Thread(target=order_flow, args=(hub, stop), daemon=True)
    driver = None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        demo_data(hub, f"http://127.0.0.1:{server.server_address[1]}")
        flow.start()
        time.sleep(3)
        dead_letter_some(hub)

        driver = make_browser(1280, 900)
        driver.get(f"{hub.url}/console#/consumers")
        wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#consumer-rows tr")))
        time.sleep(21)  # lag samples every 5 s
        shoot(driver, "consumers")

        desktop(driver)
        driver.get(f"{hub.url}/console#/consumers/shipping")
        wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#dl-rows tr")))
        boxes = driver.find_elements(By.CSS_SELECTOR, "#dl-rows input[type=checkbox]")
        for box in boxes[:2]:
            box.click()
        shoot(driver, "consumer")

        desktop(driver)
        driver.get(f"{hub.url}/console#/rules")
        wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#rule-rows tr")))
        shoot(driver, "rules")

        desktop(driver)
        driver.get(f"{hub.url}/console#/rules/orders-webhook")
        wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#dl-rows tr")))
        shoot(driver, "rule")

        desktop(driver)
        driver.get(f"{hub.url}/console#/metrics")
        wait(driver).until(lambda d: d.find_element(By.ID, "metric-head").text not in ("", "—"))
        time.sleep(24)  # scraped every 2 s
        shoot(driver, "metrics")

        desktop(driver)
        driver.get(f"{hub.url}/console#/system")
        wait(driver).until(EC.presence_of_element_located((By.ID, "store-size")))
        shoot(driver, "hubs")

        desktop(driver)
        driver.get(f"{hub.url}/console#/search?subject=hub.*.orders.%3E&limit=25")
        wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#search-rows tr")))
        shoot(driver, "search")

        desktop(driver)
        first = driver.find_element(By.CSS_SELECTOR, "#search-rows tr").get_attribute("data-id")
        driver.get(f"{hub.url}/console#/event/{first}")
        wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#trace-list li")))
        shoot(driver, "event")

        desktop(driver)
        driver.get(f"{hub.url}/console#/tail")
        wait(driver).until(EC.text_to_be_present_in_element((By.ID, "tail-status"), "live"))
        time.sleep(6)
        shoot(driver, "tail", height=900)
        driver.quit()

        driver = make_browser(500, 844)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        driver.get(f"{hub.url}/console#/tail")
        wait(driver).until(EC.text_to_be_present_in_element((By.ID, "tail-status"), "live"))
        time.sleep(4)
        shoot(driver, "phone-tail", height=844, phone=True)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        driver.get(f"{hub.url}/console#/event/{first}")
        wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#trace-list li")))
        shoot(driver, "phone-event", phone=True)
        driver.quit()
        driver = None
    finally:
        stop.set()
        server.shutdown()
        if driver:
            driver.quit()
        hub.stop()

    secured = Herald("--auth", "required", "--admin-key", ADMIN)
    try:
        driver = make_browser(1280, 700)
        driver.get(f"{secured.url}/console")
        wait(driver).until(EC.presence_of_element_located((By.ID, "login-key"))).send_keys("hrld_not-a-key")
        driver.find_element(By.ID, "login-submit").click()
        wait(driver).until(EC.text_to_be_present_in_element((By.ID, "login-message"), "refused"))
        shoot(driver, "login", height=700)
        driver.quit()
    finally:
        secured.stop()


if __name__ == "__main__":
    main()
