"""A screenshot of the chat page talking to a trained model (the README's picture).

    python benchmarks/chat_page_screenshot.py --workdir runs/shakespeare_char \
        --out benchmarks/serve_chat_page.png

Starts `python -m gptjax.serve` on a free port of 127.0.0.1, types each --message into the
page in headless Chromium (Debian's chromium and chromium-driver, driven by selenium), waits
for every streamed reply, saves the window as a PNG and stops the server with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "serve_chat_page.png"))
    ap.add_argument("--message", action="append", default=None)
    ap.add_argument("--temperature", default="0.8")
    ap.add_argument("--max_tokens", default="30")
    ap.add_argument("--size", default="1000,720")
    args = ap.parse_args()
    messages = args.message or ["ROMEO:", "What say you, my lord?", "And the king?"]

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen([sys.executable, "-m", "gptjax.serve", "--workdir", args.workdir,
                             "--port", "0", "--slots", "2", "--log_level", "warning"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    try:
        deadline = time.monotonic() + 600
        while not any(" on http://" in x for x in lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start:\n" + "".join(lines))
            time.sleep(0.1)
        url = next(x for x in lines if " on http://" in x).split(" on ")[-1].strip()
        with tempfile.TemporaryDirectory() as profile:
            opts = webdriver.ChromeOptions()
            opts.binary_location = shutil.which("chromium")
            for flag in (*FLAGS, f"--window-size={args.size}", f"--user-data-dir={profile}"):
                opts.add_argument(flag)
            driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")),
                                      options=opts)
            try:
                driver.get(url)
                WebDriverWait(driver, 30).until(
                    lambda d: "context" in d.find_element(By.ID, "model").text)
                for field, value in (("temperature", args.temperature),
                                     ("max_tokens", args.max_tokens)):
                    box = driver.find_element(By.ID, field)
                    box.clear()
                    box.send_keys(value)
                for i, text in enumerate(messages):
                    box = driver.find_element(By.ID, "input")
                    box.send_keys(text)
                    box.send_keys(Keys.ENTER)
                    WebDriverWait(driver, 120).until(lambda d: len(d.find_elements(
                        By.CSS_SELECTOR, ".msg.assistant[data-state=done], .msg.error")) > i)
                driver.save_screenshot(args.out)
            finally:
                driver.quit()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
