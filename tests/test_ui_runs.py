"""The Train and Runs tabs in a real browser: launch a QLoRA run on a small model from sample data,
watch it grow, reload the page, restart the app server, stop, resume, and see it complete."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.app import screenshot
from tests.support.tinymodel import build_tiny_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _run_state(page) -> tuple[str, int]:
    span = page.locator("#run-progress .run-state")
    span.wait_for(timeout=30_000)
    return span.get_attribute("data-state"), int(span.get_attribute("data-step") or 0)


def _wait_state(page, states: tuple[str, ...], min_step: int = 0, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    state, step = "", 0
    while time.monotonic() < deadline:
        try:
            state, step = _run_state(page)
        except Exception:  # noqa: BLE001 - the panel re-renders between polls
            state, step = "", 0
        if state in states and step >= min_step:
            return step
        page.wait_for_timeout(700)
    raise AssertionError(f"run stayed {state!r} at step {step}, wanted {states} and step >= {min_step}")


def _open_runs(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Runs", exact=True).click()


def test_launch_watch_reload_restart_stop_resume(studio_home, page, tmp_path, app):
    small = build_tiny_model(tmp_path / "small-llama", hidden=64)  # 4-bit kernels want 64-wide layers
    server = app()
    try:
        page.goto(server.url)
        page.get_by_role("tab", name="Train", exact=True).click()
        page.locator("#train-model input").fill(str(small))
        page.get_by_text("Advanced: every setting of the recipe").click()  # the recipe field by field
        page.get_by_label("Training length (steps)", exact=True).fill("200")
        page.get_by_label("Save progress every N steps", exact=True).fill("20")
        page.get_by_role("button", name="Check recipe", exact=True).click()
        page.get_by_text("No problems found").or_(page.get_by_text("⚠").first).wait_for(timeout=60_000)
        command = page.locator("#train-command .cm-content").inner_text()
        assert "python -m studio train recipes/qlora_sft.yaml" in command and "max_steps=200" in command
        screenshot(page, "train")
        page.get_by_role("button", name="Launch run", exact=True).click()
        page.get_by_text(re.compile(r"Run \*?\*?\d{8}-\d{6}-sft")).first.wait_for(timeout=30_000)

        _open_runs(page, server.url)
        first = _wait_state(page, ("running",), min_step=2)
        later = _wait_state(page, ("running",), min_step=first + 3)
        assert later > first  # the curve grows
        assert page.locator("#run-progress progress").count() == 1
        screenshot(page, "runs")

        page.reload()  # a reload finds the run, still running
        page.get_by_role("tab", name="Runs", exact=True).click()
        after_reload = _wait_state(page, ("running",), min_step=later)

        server.kill()  # the app dies; the run lives in its own process group
        server = app()
        _open_runs(page, server.url)
        _wait_state(page, ("running",), min_step=after_reload + 1)

        page.get_by_role("button", name="Stop", exact=True).click()
        stopped_at = _wait_state(page, ("stopped",), timeout=120)
        assert stopped_at < 200
        page.get_by_role("button", name="Resume", exact=True).click()
        _wait_state(page, ("completed",), min_step=200, timeout=480)
        # probes asked from the held-out split of sample:alpaca.jsonl, shown as cards
        page.locator("#run-probes .probe-card").first.wait_for(timeout=30_000)
        assert "Give three tips for staying healthy." not in page.locator("#run-probes").inner_text()
        assert "What happened: loss" in page.locator("#run-summary").inner_text()
    finally:
        server.kill()
