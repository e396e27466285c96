"""The Evaluate tab in a real browser: from a finished run on the Runs tab, one click to Evaluate,
typed prompts, an OpenAI-compatible judge over HTTP, Start, and the summary with its win rate."""

from __future__ import annotations

import time

import pytest

from tests.support.app import screenshot
from tests.support.judgeserver import JudgeServer
from tests.test_eval import make_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _eval_state(page) -> str:
    node = page.locator("#eval-state")
    return node.get_attribute("data-state") if node.count() else ""


def test_evaluate_a_run_from_the_browser(studio_home, tiny_model, page, app):
    make_run(studio_home, tiny_model, run_id="tuned-run")
    judge = JudgeServer(mode="longer", key="sk-ui").start()
    server = app()
    try:
        page.goto(server.url)
        page.get_by_role("tab", name="Runs", exact=True).click()
        offer = page.get_by_role("button", name="Evaluate", exact=True)
        offer.wait_for(timeout=30_000)  # offered because the run has completed
        offer.click()
        page.get_by_text("Is the tuned model better than the base").wait_for()
        assert page.locator("#eval-run input").input_value() == "tuned-run"

        page.get_by_label("Prompts I type", exact=True).check()
        page.locator("#eval-prompts textarea").fill("What is the capital of Austria?\nName a primary colour.")
        page.get_by_label("An OpenAI-compatible endpoint", exact=True).check()
        page.get_by_label("Endpoint URL").fill(judge.url)
        page.get_by_label("Endpoint model name").fill("stand-in")
        page.get_by_label("API key (kept in memory, never saved)").fill("sk-ui")
        page.get_by_role("button", name="Start evaluation", exact=True).click()

        deadline = time.monotonic() + 240
        while _eval_state(page) != "completed" and time.monotonic() < deadline:
            assert _eval_state(page) not in ("failed", "interrupted"), page.locator(
                "#eval-progress"
            ).inner_text()
            page.wait_for_timeout(700)
        assert _eval_state(page) == "completed"
        summary = page.locator("#eval-summary")
        summary.get_by_text("win rate").first.wait_for(timeout=30_000)
        text = summary.inner_text()
        assert "n=2" in text and "both orders" in text and "general-text perplexity" in text
        assert len(judge.requests) == 4  # 2 prompts x 2 orders
        screenshot(page, "evaluate")
        assert "What is the capital of Austria?" in page.locator("#eval-table").inner_text()
    finally:
        judge.stop()
