"""The web console (`/console`) in a real headless browser against the real binary.

Debian's `chromium`, driven through its `chromedriver` by selenium (scripts/test.sh
installs both when missing). Each test starts its own hub, so each has its own origin
(and so its own sessionStorage), and drives the page as a person would: it types, clicks
and waits for what the page shows, and checks the outcome through the API.

Every test also fails on any error in the browser's console, such as a
Content-Security-Policy violation or an uncaught exception.
"""
import os
import time
import uuid

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from conftest import Herald

CHROMIUM = os.environ.get("HERALD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("HERALD_CHROMEDRIVER", "/usr/bin/chromedriver")
ADMIN = "admin-secret-for-console-tests-0123"


def make_browser(width: int = 1280, height: int = 900) -> webdriver.Chrome:
    """Headless Chromium at `width` x `height` CSS pixels."""
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root (CI does)
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--force-color-profile=srgb",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture()
def browser():
    driver = make_browser()
    yield driver
    driver.quit()


def browser_errors(driver) -> list[str]:
    """Errors the page logged (CSP violations, exceptions), leaving out failed requests,
    which the tests cause on purpose (a 401 from a wrong key, a 403)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE"
        and "Failed to load resource" not in entry["message"]
    ]


@pytest.fixture()
def no_page_errors(browser):
    yield
    errors = browser_errors(browser)
    assert not errors, errors


def wait(driver, seconds: float = 10):
    # The pages re-render as events arrive: an element found a moment ago may be gone,
    # which only means "look again".
    return WebDriverWait(driver, seconds, poll_frequency=0.02,
                         ignored_exceptions=(StaleElementReferenceException,))


def publish(hub: Herald, subject: str, payload: dict, key: str | None = None, **extra) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = requests.post(
        f"{hub.url}/api/events",
        json={"subject": subject, "payload": payload, **extra},
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()


def tail_row(event_id: str) -> tuple[str, str]:
    return (By.CSS_SELECTOR, f'#tail-rows tr[data-id="{event_id}"]')


def test_the_tail_opens_on_stored_events_and_shows_a_new_one_within_a_second(herald, browser, no_page_errors):
    stored = [publish(herald, f"hub.local-hub.tail.n{i % 3}", {"i": i}) for i in range(60)]
    browser.get(f"{herald.url}/console")
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "tail-status"), "live"))
    # The last 50 stored events, newest first.
    rows = browser.find_elements(By.CSS_SELECTOR, "#tail-rows tr")
    assert len(rows) == 50
    assert rows[0].get_attribute("data-id") == stored[-1]["event_id"]
    assert rows[-1].get_attribute("data-id") == stored[10]["event_id"]

    # A publish over HTTP shows within a second of its answer.
    event = publish(herald, "hub.local-hub.tail.new", {"hello": "<b>world</b>"})
    answered = time.monotonic()
    row = WebDriverWait(browser, 1, poll_frequency=0.01).until(
        EC.presence_of_element_located(tail_row(event["event_id"])))
    assert time.monotonic() - answered < 1
    # Event data is text, never markup.
    assert '<b>world</b>' in row.text
    assert not row.find_elements(By.TAG_NAME, "b")
    assert browser.find_elements(By.CSS_SELECTOR, "#tail-rows tr")[0] == row

    # Filtering as you type: only the pattern's events, stored and live.
    box = browser.find_element(By.ID, "tail-subject")
    box.clear()
    box.send_keys("hub.local-hub.tail.n1")
    wait(browser).until(lambda d: d.find_element(By.ID, "tail-status").text == "live" and all(
        r.get_attribute("data-id") in {e["event_id"] for e in stored[1::3]}
        for r in d.find_elements(By.CSS_SELECTOR, "#tail-rows tr")) and d.find_elements(By.CSS_SELECTOR, "#tail-rows tr"))
    other = publish(herald, "hub.local-hub.tail.n2", {})
    wanted = publish(herald, "hub.local-hub.tail.n1", {})
    wait(browser, 1).until(EC.presence_of_element_located(tail_row(wanted["event_id"])))
    assert not browser.find_elements(*tail_row(other["event_id"]))

    # Paused, nothing arrives; resumed, it goes on from the last seq seen.
    browser.find_element(By.ID, "tail-pause").click()
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "tail-status"), "paused at seq"))
    missed = publish(herald, "hub.local-hub.tail.n1", {"while": "paused"})
    time.sleep(0.5)
    assert not browser.find_elements(*tail_row(missed["event_id"]))
    browser.find_element(By.ID, "tail-pause").click()
    wait(browser, 2).until(EC.presence_of_element_located(tail_row(missed["event_id"])))
    assert browser.find_element(By.ID, "tail-rate").text.endswith("/s")
    assert browser.find_element(By.ID, "tail-lag").text != "—"


def test_a_search_finds_an_event_and_its_page_shows_it_and_its_trace(herald, browser, no_page_errors):
    correlation = str(uuid.uuid4())
    created = publish(herald, "hub.local-hub.orders.created", {"order": 7}, correlation_id=correlation)
    publish(herald, "hub.local-hub.payments.captured", {"order": 7}, correlation_id=correlation)
    publish(herald, "hub.local-hub.orders.shipped", {"order": 7}, correlation_id=correlation)
    publish(herald, "hub.local-hub.orders.created", {"order": 8})

    browser.get(f"{herald.url}/console#/search")
    subject = wait(browser).until(EC.presence_of_element_located((By.ID, "search-subject")))
    subject.send_keys("hub.*.orders.created")
    browser.find_element(By.ID, "search-correlation-id").send_keys(correlation)
    browser.find_element(By.ID, "search-submit").click()
    wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#search-rows tr")) == 1)
    row = browser.find_element(By.CSS_SELECTOR, "#search-rows tr")
    assert row.get_attribute("data-id") == created["event_id"]

    row.click()
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "event-subject"), "hub.local-hub.orders.created"))
    assert created["event_id"] in browser.find_element(By.ID, "event-json").text
    browser.find_element(By.ID, "tab-cloudevent").click()
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "event-json"), '"specversion": "1.0"'))
    assert f'"heraldseq": {created["seq"]}' in browser.find_element(By.ID, "event-json").text

    # The trace: every event of the correlation, across subjects, in time order.
    wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trace-list li")) == 3)
    items = browser.find_elements(By.CSS_SELECTOR, "#trace-list li")
    assert [i.get_attribute("data-subject") for i in items] == [
        "hub.local-hub.orders.created",
        "hub.local-hub.payments.captured",
        "hub.local-hub.orders.shipped",
    ]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#trace svg circle")) == 3
    assert "current" in items[0].get_attribute("class")


def test_a_dead_letter_is_redriven_and_another_discarded_from_the_consumers_page(herald, browser, no_page_errors):
    api = herald.url + "/api/consumers/console-dl"
    response = requests.put(api, json={"filter_subjects": ["hub.local-hub.dl.>"], "max_deliver": 1}, timeout=10)
    assert response.status_code == 201, response.text
    event = publish(herald, "hub.local-hub.dl.failed", {"job": 1})
    fetched = requests.post(api + "/fetch", json={"batch": 1}, timeout=10).json()["messages"]
    assert [m["event"]["id"] for m in fetched] == [event["event_id"]]
    # A NAK of the last allowed delivery dead-letters the message at once.
    nak = requests.post(api + "/nak", json={"ack_ids": [fetched[0]["ack_id"]], "reason": "boom"}, timeout=10)
    assert nak.status_code == 200, nak.text
    assert requests.get(api + "/dead-letters", timeout=10).json()["count"] == 1

    browser.get(f"{herald.url}/console#/consumers")
    row = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, '#consumer-rows tr[data-name="console-dl"]')))
    assert "1" in row.text
    row.click()
    dead = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, f'#dl-rows tr[data-seq="{event["seq"]}"]')))
    assert "boom" in dead.text and "max_deliver" in dead.text
    dead.find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
    browser.find_element(By.ID, "dl-redrive").click()
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "dl-message"), "1 redriven"))

    # Back for delivery, as the API tells.
    assert requests.get(api + "/dead-letters", timeout=10).json()["count"] == 0
    again = requests.post(api + "/fetch", json={"batch": 1}, timeout=10).json()["messages"]
    assert [m["event"]["id"] for m in again] == [event["event_id"]]
    assert requests.get(api, timeout=10).json()["state"]["num_dead_letters"] == 0

    # Given up on again (term), it is discarded from the page, after a confirmation.
    term = requests.post(api + "/term", json={"ack_ids": [again[0]["ack_id"]], "reason": "poison"}, timeout=10)
    assert term.status_code == 200, term.text
    browser.refresh()
    dead = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, f'#dl-rows tr[data-seq="{event["seq"]}"]')))
    assert "poison" in dead.text and "term" in dead.text
    browser.find_element(By.ID, "dl-all").click()
    browser.find_element(By.ID, "dl-discard").click()
    wait(browser).until(EC.alert_is_present()).accept()
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "dl-message"), "1 discarded"))
    assert requests.get(api + "/dead-letters", timeout=10).json()["count"] == 0
    assert requests.post(api + "/fetch", json={"batch": 1}, timeout=10).json()["messages"] == []


def test_the_rules_page_shows_stats_and_a_rules_dead_letters(herald, browser, no_page_errors):
    # Port 9 (discard) on loopback: nothing listens, so each delivery fails at once.
    rule = requests.post(f"{herald.url}/api/rules", json={
        "id": "ledger", "subject_pattern": "hub.local-hub.ledger.>",
        "action": {"type": "webhook", "url": "http://127.0.0.1:9/hook", "max_attempts": 1}}, timeout=10)
    assert rule.status_code == 201, rule.text
    event = publish(herald, "hub.local-hub.ledger.posted", {"amount": 3})
    deadline = time.monotonic() + 10
    while requests.get(f"{herald.url}/api/rules/ledger/dead-letters", timeout=10).json()["count"] == 0:
        assert time.monotonic() < deadline, "the rule never gave up"
        time.sleep(0.1)

    browser.get(f"{herald.url}/console#/rules")
    row = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, '#rule-rows tr[data-id="ledger"]')))
    assert "127.0.0.1:9/hook" in row.text
    row.click()
    dead = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, f'#dl-rows tr[data-seq="{event["seq"]}"]')))
    assert "max_deliver" in dead.text
    dead.find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
    browser.find_element(By.ID, "dl-redrive").click()
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "dl-message"), "1 redriven"))


@pytest.fixture()
def secured_herald():
    hub = Herald("--auth", "required", "--admin-key", ADMIN)
    yield hub
    hub.stop()


def test_with_keys_required_the_login_refuses_a_wrong_key_and_takes_a_right_one(secured_herald, browser, no_page_errors):
    hub = secured_herald
    browser.get(f"{hub.url}/console")
    key = wait(browser).until(EC.presence_of_element_located((By.ID, "login-key")))
    key.send_keys("not-the-key-0123456789abcdef")
    browser.find_element(By.ID, "login-submit").click()
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "login-message"), "This key was refused."))

    key.clear()
    key.send_keys(ADMIN)
    browser.find_element(By.ID, "login-submit").click()
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "tail-status"), "live"))
    # The stream takes the key as ?access_token=: a publish arrives.
    event = publish(hub, "hub.local-hub.secured.hello", {}, key=ADMIN)
    wait(browser, 2).until(EC.presence_of_element_located(tail_row(event["event_id"])))
    # An admin key reads /metrics.
    browser.get(f"{hub.url}/console#/metrics")
    wait(browser).until(lambda d: d.find_element(By.ID, "metric-head").text not in ("", "—"))

    # A tenant's key signs in too, and is told which panels it may not see.
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert requests.post(f"{hub.url}/api/tenants", json={"id": "acme", "subjects": ["hub.acme.>"]},
                         headers=admin, timeout=10).status_code == 201
    made = requests.post(f"{hub.url}/api/keys", json={"tenant": "acme", "publish": {"allow": ["hub.acme.>"]},
                                                        "subscribe": {"allow": ["hub.acme.>"]}},
                         headers=admin, timeout=10)
    assert made.status_code == 201, made.text
    browser.find_element(By.ID, "logout").click()
    key = wait(browser).until(EC.presence_of_element_located((By.ID, "login-key")))
    key.send_keys(made.json()["key"])
    browser.find_element(By.ID, "login-submit").click()
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "tail-status"), "live"))
    browser.get(f"{hub.url}/console#/metrics")
    wait(browser).until(EC.text_to_be_present_in_element((By.ID, "view"), "Not allowed for this key"))

    # A key that stops working sends the page back to the login.
    browser.execute_script("sessionStorage.setItem('herald.console.key', 'revoked-key-0123456789abcdef')")
    browser.get(f"{hub.url}/console#/consumers")
    browser.refresh()
    wait(browser).until(EC.presence_of_element_located((By.ID, "login-key")))
