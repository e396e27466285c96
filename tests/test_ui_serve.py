"""The API tab in a real browser: pick a finished run, start serving, see the address and model
names, get an answer through the official `openai` client, refuse a network bind without a key,
stop serving."""

from __future__ import annotations

import pytest
from openai import OpenAI
from playwright.sync_api import expect

from studio.serve import process
from tests.support.app import _free_port, screenshot
from tests.support.runfolder import build_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_start_serving_a_run_answer_through_openai_and_stop(studio_home, tiny_model, page, app):
    build_run(studio_home / "runs", tiny_model, run_id="run-1")
    port = _free_port()
    server = app()
    try:
        page.goto(server.url)
        page.get_by_role("tab", name="API", exact=True).click()
        expect(page.locator("#serve-status")).to_contain_text("Not serving")
        page.locator("#serve-model textarea").fill(str(tiny_model))
        page.locator("#serve-adapters input").click()
        page.get_by_role("option", name="run-1", exact=True).click()
        page.locator("#serve-port input").fill(str(port))

        reach = page.locator("#serve-reach")
        expect(reach).to_contain_text("Only programs on this computer can connect")
        page.get_by_label("Other computers too (needs an API key)").check()
        # said as soon as it is picked, before anything starts
        expect(reach).to_contain_text("Other computers need an API key", timeout=30_000)
        page.get_by_role("button", name="Start serving", exact=True).click()
        expect(page.get_by_text("needs an API key").first).to_be_visible(timeout=30_000)
        assert process.status() is None  # nothing started

        page.get_by_label("Only this computer").check()
        expect(reach).to_contain_text("Only programs on this computer can connect", timeout=30_000)
        page.get_by_role("button", name="Start serving", exact=True).click()
        status = page.locator("#serve-status")
        expect(status).to_contain_text(f"Serving at http://127.0.0.1:{port}/v1", timeout=120_000)
        expect(status).to_contain_text("run-1")
        expect(status).to_contain_text("tiny-llama")
        screenshot(page, "serve")

        oai = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in oai.models.list()] == ["tiny-llama", "run-1"]
        stream = oai.chat.completions.create(
            model="run-1", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
        )
        assert [c.choices[0].finish_reason for c in stream if c.choices][-1] in ("stop", "length")

        page.get_by_role("button", name="Stop serving", exact=True).click()
        expect(status).to_contain_text("Not serving", timeout=30_000)
        assert process.status() is None
    finally:
        process.stop()
