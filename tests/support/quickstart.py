"""The README's quick start, walked in Chromium on the real default model, saving its screenshots.

    python -m tests.support.quickstart [--model-home DIR]

Starts `python app.py` on a fresh STUDIO_HOME, then does what a newcomer does from the first screen
without touching a technical field: Train tab (guided) -> the sample data, "answers in my style",
"Quick" -> Plan my run (each choice with its reason and a measured time) -> Start training -> the
finished run in words in the Runs tab -> "Chat with it" -> the first held-out question answered by
the base model and the tuned adapter side by side. Writes docs/screenshots/quickstart-*.png and
exits non-zero when a step does not show what the README promises. Takes ~5 min on a 2-core CPU
(the run itself ~2 min). `--model-home` reuses a STUDIO_HOME whose models/ already holds the
converted default model (otherwise the app converts it, ~35 s). Offline: HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from tests.support.app import CHROMIUM, CHROMIUM_ARGS, AppServer, screenshot


def _answers(page, pane: str) -> str:
    return " ".join(page.locator(f"#{pane} .bot").all_inner_texts()).strip()


def walk(page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    page.get_by_role("tab", name="Train", exact=True).click()
    expect(page.locator("#train-dataset input")).to_have_value("sample:alpaca.jsonl")
    page.get_by_label("Teach answers in my style and format", exact=True).check()
    page.get_by_label("Quick (about 5 min)", exact=True).check()
    page.get_by_role("button", name="Plan my run", exact=True).click()
    expect(page.locator("#train-estimate")).to_contain_text("on this machine (measured:", timeout=300_000)
    screenshot(page, "quickstart-1-plan")

    page.get_by_role("button", name="Start training", exact=True).click()
    run = page.locator("#guided-run")
    expect(run).to_contain_text(re.compile(r"step ([5-9]|\d\d) of \d+"), timeout=300_000)
    screenshot(page, "quickstart-2-training")
    page.locator("#guided-run[data-state='completed']").wait_for(timeout=900_000)

    page.get_by_role("tab", name="Runs", exact=True).click()
    summary = page.locator("#run-summary")
    expect(summary).to_contain_text(re.compile(r"loss (fell|rose|stayed)"), timeout=30_000)
    expect(summary).to_contain_text("'Short answer:'")
    expect(page.locator("#run-probes .probe-card").first).to_be_visible()
    screenshot(page, "quickstart-3-finished")

    page.get_by_role("button", name="Chat with it", exact=True).click()
    expect(page.locator("#chat-memory")).to_contain_text("+ 1 adapter(s)", timeout=120_000)
    page.get_by_role("button", name="Send", exact=True).click()  # the probe question is ready
    expect(page.locator("#chat-reveal")).to_contain_text("Both answers are in", timeout=180_000)
    left, right = _answers(page, "chat-left"), _answers(page, "chat-right")
    print(f"base: {left[:120]!r}\ntuned: {right[:120]!r}")
    if "Short answer:" not in right:
        raise SystemExit("the tuned side did not answer in the sample data's style")
    screenshot(page, "quickstart-4-chat")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-home", type=Path, help="a STUDIO_HOME whose models/ holds the converted model"
    )
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="quickstart-"))
    if args.model_home:
        (home / "models").symlink_to((args.model_home / "models").resolve(), target_is_directory=True)
    server = AppServer(home, {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}).start()
    started = time.monotonic()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            walk(page, server.url)
            browser.close()
    finally:
        server.kill()
    print(f"quick start walked in {time.monotonic() - started:.0f} s; screenshots in docs/screenshots/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
