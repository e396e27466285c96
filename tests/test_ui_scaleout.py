"""Scale-out from the Train tab: "Devices: 2" launches `accelerate launch` with two processes
(gloo on this CPU), the run completes, and rank 0 alone writes the run folder."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_two_process_run_launched_from_the_train_tab(studio_home, tiny_model, page, app):
    server = app()
    try:
        page.goto(server.url)
        page.get_by_role("tab", name="Train", exact=True).click()
        page.locator("#train-model input").fill(str(tiny_model))
        page.get_by_text("Advanced: every setting of the recipe").click()  # the recipe field by field
        page.get_by_label("Recipe", exact=True).click()
        page.get_by_role("option", name="LoRA SFT", exact=True).click()
        page.get_by_label("Devices (GPUs)", exact=True).fill("2")
        page.get_by_label("Training length (steps)", exact=True).fill("4")
        page.get_by_label("Examples at a time", exact=True).fill("2")
        page.get_by_role("button", name="Check recipe", exact=True).click()
        command = page.locator("#train-command .cm-content")
        command.filter(has_text="accelerate launch").wait_for(timeout=60_000)
        assert "--num_processes 2" in command.inner_text()
        page.get_by_role("button", name="Launch run", exact=True).click()
        page.get_by_text("Follow it in the Runs tab").wait_for(timeout=30_000)

        run_dir = next(
            p for p in (studio_home / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        deadline = time.monotonic() + 300
        state = ""
        while time.monotonic() < deadline:
            state = json.loads((run_dir / "status.json").read_text()).get("state", "")
            if state in ("completed", "failed", "stopped"):
                break
            time.sleep(1)
        status = json.loads((run_dir / "status.json").read_text())
        assert state == "completed", (run_dir / "train.log").read_text()[-3000:]
        assert status["processes"] == 2
        launch = json.loads((run_dir / "launch.json").read_text())
        assert launch["num_processes"] == 2 and "--multi_gpu" in launch["argv"]
        steps = [
            json.loads(line)["step"]
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)
        ]
        assert steps == sorted(set(steps)) and steps[-1] == 4  # rank 0 alone writes metrics
        assert (run_dir / "adapter" / "adapter_config.json").is_file()

        page.get_by_role("tab", name="Runs", exact=True).click()
        page.locator("#run-progress .run-state[data-state='completed']").wait_for(timeout=30_000)
    finally:
        server.kill()
