"""The chat page in a real browser: headless Chromium (Debian's) types, the reply streams in.

Needs `apt-get install chromium chromium-driver` (.ci/run installs them) and selenium (the test
extra); skipped with that message where they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request

import pytest

from gptjax.serving.app import create_app
from gptjax.serving.engine import Engine
from gptjax.serving.service import Defaults, Service
from serve_util import running_server, slow_steps, tiny_chat_model

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=900,640")
# Records every text the reply bubble shows, so the test can tell a streamed reply from one
# that appeared whole.
OBSERVE = """
window.seen = [];
new MutationObserver(() => {
  const m = document.querySelectorAll('.msg.assistant');
  if (m.length) window.seen.push(m[m.length - 1].textContent);
}).observe(document.getElementById('messages'), {subtree: true, childList: true,
                                                  characterData: true});
"""


@pytest.fixture(scope="module")
def server():
    model = tiny_chat_model(block_size=32)
    # The shape, slots and steps of tests/test_serve.py: one compile when both run in a process.
    engine = Engine(model.params, model.cfg, 4, Service.stop_ids(model.tokenizer, True),
                    steps_per_call=3)
    service = Service(model, engine, "tiny-chat", True, Defaults())
    with running_server(create_app(service)) as url:
        yield url, service


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service as DriverService
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _api_reply(url, messages, max_tokens):
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(
        {"messages": messages, "temperature": 0, "max_tokens": max_tokens}).encode(),
        {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


def _send(driver, text):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    before = len(driver.find_elements(By.CSS_SELECTOR, ".msg.assistant, .msg.error"))
    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "const m = document.querySelectorAll('.msg.error, .msg.assistant[data-state=done]');"
        f"return m.length > {before};"))
    done = driver.find_elements(By.CSS_SELECTOR, ".msg.error, .msg.assistant")
    return done[-1]


def test_the_page_streams_replies_keeps_history_and_starts_over(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, service = server
    browser.get(url + "/")
    WebDriverWait(browser, 30).until(
        lambda d: "tiny-chat" in d.find_element(By.ID, "model").text)
    for field, value in (("temperature", "0"), ("max_tokens", "8")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.execute_script(OBSERVE)
    undo = slow_steps(service.engine, 0.05)  # a reply takes ~0.4 s: long enough to watch
    try:
        first = _send(browser, "hi")
        seen = browser.execute_script("return window.seen;")
        second = _send(browser, "ok")
    finally:
        undo()
    want = _api_reply(url, [{"role": "user", "content": "hi"}], 8)
    assert first.text == want.strip() and first.get_attribute("textContent") == want
    partial = {s for s in seen if s and s != want}
    assert partial and all(want.startswith(s) for s in partial)  # it grew chunk by chunk
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": want},
               {"role": "user", "content": "ok"}]
    assert second.get_attribute("textContent") == _api_reply(url, history, 8)
    shot = os.environ.get("GPTJAX_CHAT_SCREENSHOT", str(tmp_path / "chat.png"))
    assert browser.save_screenshot(shot) and os.path.getsize(shot) > 1000

    error = _send(browser, "abc " * 10)  # longer than the context of 32
    assert "error" in error.get_attribute("class") and "context" in error.text
    # Four turns outgrow the context: the page leaves the oldest exchange out and asks again.
    third = _send(browser, "and now?")
    assert "assistant" in third.get_attribute("class") and third.get_attribute("title")
    turns = [*history, {"role": "assistant", "content": second.get_attribute("textContent")},
             {"role": "user", "content": "and now?"}]
    for start in (2, 4):  # the most recent whole exchanges that fit, as the page chooses them
        try:
            want_third = _api_reply(url, turns[start:], 8)
            break
        except urllib.error.HTTPError as e:
            assert e.code == 400
    assert third.get_attribute("textContent") == want_third

    browser.find_element(By.ID, "new_chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    assert _send(browser, "hi").get_attribute("textContent") == want  # no history any more
