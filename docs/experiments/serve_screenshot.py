"""The chat page's screenshot in the README: the default model served, a test video asked about and a
prompt drawn, in headless Chromium.

    python docs/experiments/serve_screenshot.py [MODEL] [OUT.png]
    # defaults: runs/sft-default/final docs/serve_page.png
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

model = sys.argv[1] if len(sys.argv) > 1 else "runs/sft-default/final"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/serve_page.png"
video = Path("data/shapes/test/videos/000001.mp4")
port = 8765
server = subprocess.Popen([sys.executable, "-m", "mmvid.serve", "--model", model, "--port", str(port),
                           "--log-level", "warning"])
try:
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('model-name').textContent.startsWith('mmvid')")
        page.set_input_files("#video-file", str(video))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('video loaded')")
        for question in ("Describe the video.", "What colour is the star?"):
            page.fill("#question", question)
            page.click("#send")
            page.wait_for_function("[...document.querySelectorAll('.assistant')].every(e => e.dataset.done)")
            time.sleep(0.2)
        page.fill("#gen-prompt", "A large red circle moves left slowly.")
        page.click("#generate")
        page.wait_for_selector("#generated[data-bytes]", timeout=120_000)
        page.evaluate("for (const id of ['generated', 'preview']) document.getElementById(id).pause()")
        page.screenshot(path=out, full_page=True)
        print("wrote", out, "|", page.inner_text("#transcript").replace("\n", " / "))
        browser.close()
finally:
    server.terminate()
    server.wait(timeout=60)
