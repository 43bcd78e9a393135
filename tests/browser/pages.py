"""Drives vitalflow's pages in a real browser (Debian's chromium, headless, over WebDriver).

Called by tests/board.rs, which starts and stops the job. Each step prints one JSON line on
stdout ({"step": ..., ...}); a step that cannot be done exits non-zero with the reason.
Steps that wait on the job read a line on stdin first when told to (--wait-stdin).
"""
import argparse
import json
import os
import signal
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                        TimeoutException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def say(step, **kv):
    print(json.dumps({"step": step, **kv}), flush=True)


def fail(step, why, driver=None, shots=None):
    if driver is not None and shots:
        driver.save_screenshot(os.path.join(shots, f"failed-{step}.png"))
    say(step, ok=False, error=why)
    sys.exit(1)


def browser(width=1600, height=1000):
    o = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--force-device-scale-factor=1"]:
        o.add_argument(a)
    o.binary_location = os.environ.get("VITALFLOW_CHROMIUM", "/usr/bin/chromium")
    service = Service(os.environ.get("VITALFLOW_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=o)


def wait(driver, seconds, what, cond, shots):
    try:
        # The board redraws every few seconds: an element found may be gone a moment later.
        return WebDriverWait(driver, seconds, poll_frequency=0.25,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                             ).until(lambda d: cond(d))
    except TimeoutException:
        fail(what, f"not within {seconds} s", driver, shots)


def tile(d, patient):
    for t in d.find_elements(By.CSS_SELECTOR, "article.tile"):
        if t.find_element(By.CSS_SELECTOR, ".who").text == patient:
            return t
    return None


def board(args):
    """The embedded default: patients, the acute tile turning critical, acknowledging it,
    and (after the test restarts the job) the page reconnecting to the open alert."""
    d = browser()
    shots = args.shots
    try:
        started = time.time()
        d.get(args.url + "/")
        wait(d, 60, "tiles", lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.tile")) >= args.patients, shots)
        say("tiles", ok=True, count=len(d.find_elements(By.CSS_SELECTOR, "article.tile")))

        def critical(d):
            t = tile(d, args.patient)
            if t is None or t.get_attribute("data-level") != "critical":
                return False
            return t.find_element(By.CSS_SELECTOR, ".alertline").text
        text = wait(d, 150, "critical", critical, shots)
        say("critical", ok=True, seconds=round(time.time() - started, 1), text=text)
        d.save_screenshot(os.path.join(shots, "board.png"))

        wait(d, 30, "alert-card", lambda d: d.find_element(
            By.CSS_SELECTOR, "#physiological .alert.critical button[data-action=acknowledge]").click() or True, shots)
        wait(d, 5, "dialog", lambda d: d.find_element(By.ID, "ack-submit").is_displayed(), shots)
        d.find_element(By.ID, "ack-by").send_keys(args.user)
        d.find_element(By.ID, "ack-note").send_keys(args.note)
        d.save_screenshot(os.path.join(shots, "acknowledge.png"))
        clicked = time.time()
        d.find_element(By.ID, "ack-submit").click()

        def acknowledged(d):
            for c in d.find_elements(By.CSS_SELECTOR, "#physiological .alert"):
                if c.get_attribute("data-state") == "acknowledged" and args.user in c.text:
                    return c.text
            return False
        text = wait(d, 60, "acknowledged", acknowledged, shots)
        d.save_screenshot(os.path.join(shots, "alert.png"))
        # Alert events that reached the page live (server-sent events), and how long each
        # took from alerting's emission to the page's render.
        live = d.execute_script("return window.vfLatencies")
        say("acknowledged", ok=True, seconds=round(time.time() - clicked, 1), text=text,
            live_ms=sorted(round(x, 1) for x in live))

        say("waiting-kill")
        sys.stdin.readline()  # the test has killed the job (kill -9)
        wait(d, 30, "down", lambda d: d.find_element(By.ID, "live").text != "live", shots)
        say("down", ok=True, shown=d.find_element(By.ID, "live").text)
        sys.stdin.readline()  # the test has started the job again
        restarted = time.time()
        wait(d, 60, "reconnected", lambda d: d.find_element(By.ID, "live").text == "live", shots)
        say("reconnected", ok=True, seconds=round(time.time() - restarted, 1))
        text = wait(d, 150, "critical-again", critical, shots)
        say("critical-again", ok=True, text=text)
    finally:
        d.quit()


def ward(args):
    """A ward with monitors dropping out: technical alerts apart from physiological ones,
    the drill-down, and the job page."""
    d = browser()
    shots = args.shots
    try:
        d.get(args.url + "/")

        def technical(d):
            cards = d.find_elements(By.CSS_SELECTOR, "#technical .alert.technical")
            return cards[0].text if cards else False
        text = wait(d, 180, "technical", technical, shots)
        say("technical", ok=True, text=text,
            in_patient_list=len(d.find_elements(By.CSS_SELECTOR, "#physiological .alert.technical")))
        label = wait(d, 10, "technical-tile", lambda d: d.find_element(
            By.CSS_SELECTOR, "article.tile[data-level=technical] .alertline").text, shots)
        say("technical-tile", ok=True, label=label)
        d.save_screenshot(os.path.join(shots, "technical.png"))

        wait(d, 10, "tile", lambda d: d.find_elements(By.CSS_SELECTOR, "article.tile")[0].click() or True, shots)
        wait(d, 10, "drill-down", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#dialog .chart svg polyline")) > 0, shots)
        d.save_screenshot(os.path.join(shots, "trends.png"))
        say("drill-down", ok=True, charts=len(d.find_elements(By.CSS_SELECTOR, "#dialog .chart")))

        d.get(args.url + "/job")
        wait(d, 10, "job", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#lag td")) >= 3 and d.find_element(By.ID, "health").text == "healthy", shots)
        time.sleep(2.5)  # a second sample gives the rate
        # Read through `wait`: the job page redraws its cards each second, and a card found
        # may be gone before its text is read.
        cards = wait(d, 10, "job-cards", lambda d: {
            c.find_element(By.CSS_SELECTOR, ".k").text: c.find_element(By.CSS_SELECTOR, ".n").text
            for c in d.find_elements(By.CSS_SELECTOR, ".card")}, shots)
        d.save_screenshot(os.path.join(shots, "job.png"))
        say("job", ok=True, cards=cards)
    finally:
        d.quit()


def debugger(args):
    """The mapping debugger: the held message with the job's templates, then a broken
    JSONPath."""
    d = browser()
    shots = args.shots
    try:
        d.get(args.url + "/debugger")
        wait(d, 10, "templates", lambda d: d.find_element(By.ID, "device").get_attribute("value").strip() != "", shots)
        msg = open(args.message).read()
        d.execute_script("document.getElementById('message').value = arguments[0];", msg)
        d.find_element(By.ID, "run").click()
        wait(d, 10, "measurements", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#measurements tr")) > 1, shots)
        rows = [[td.text for td in r.find_elements(By.TAG_NAME, "td")]
                for r in d.find_elements(By.CSS_SELECTOR, "#measurements tr")[1:]]
        observations = json.loads(d.find_element(By.ID, "observations").text)
        d.save_screenshot(os.path.join(shots, "debugger.png"))
        say("normalized", ok=True, rows=rows, observations=observations)

        device = d.find_element(By.ID, "device").get_attribute("value")
        broken = device.replace(args.break_from, args.break_to, 1)
        if broken == device:
            fail("broken", f"{args.break_from!r} is not in the device template")
        d.execute_script("document.getElementById('device').value = arguments[0];", broken)
        d.find_element(By.ID, "run").click()
        p = wait(d, 10, "problem", lambda d: d.find_elements(By.CSS_SELECTOR, "#problems .problem") or False, shots)
        text = p[0].text
        d.save_screenshot(os.path.join(shots, "debugger-error.png"))
        say("problem", ok=True, text=text)
    finally:
        d.quit()


def devices(args):
    """The mapping debugger on an IHE PCD-01 message: the device tree it shows."""
    d = browser()
    shots = args.shots
    try:
        d.get(args.url + "/debugger")
        wait(d, 10, "templates", lambda d: d.find_element(By.ID, "device").get_attribute("value").strip() != "", shots)
        d.execute_script("document.getElementById('message').value = arguments[0];", open(args.message).read())
        d.find_element(By.ID, "run").click()
        wait(d, 10, "devices", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#devices tr")) > 1, shots)
        rows = []
        for r in d.find_elements(By.CSS_SELECTOR, "#devices tr")[1:]:
            cells = r.find_elements(By.TAG_NAME, "td")
            indent = float(cells[0].value_of_css_property("padding-left").rstrip("px"))
            rows.append({"cells": [c.text for c in cells], "indent": indent})
        d.execute_script("document.getElementById('devices').scrollIntoView()")
        d.save_screenshot(os.path.join(shots, "debugger-devices.png"))
        say("devices", ok=True, rows=rows)
    finally:
        d.quit()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["board", "ward", "debugger", "devices"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--shots", required=True)
    ap.add_argument("--patients", type=int, default=1)
    ap.add_argument("--patient", default="P-0000")
    ap.add_argument("--user", default="Nurse Ada")
    ap.add_argument("--note", default="at the bedside")
    ap.add_argument("--message")
    ap.add_argument("--break-from")
    ap.add_argument("--break-to")
    args = ap.parse_args()
    # The test stops the script with SIGTERM: exiting through `finally` quits the WebDriver
    # session, so chromedriver and chromium stop with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs(args.shots, exist_ok=True)
    {"board": board, "ward": ward, "debugger": debugger, "devices": devices}[args.what](args)


if __name__ == "__main__":
    main()
