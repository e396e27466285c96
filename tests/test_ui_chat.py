"""The Chat and Votes tabs in a real browser: the tiny model's base against a LoRA adapter trained
by the real CLI, both panes streaming, a blind vote and an edited answer, then the Votes tab exports
DPO pairs that the data check accepts, saves them as a dataset, and a DPO run trains on it."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from playwright.sync_api import expect

from studio import rundir, workspace
from studio.prefs import records, store
from studio.train import runs
from tests.support.app import ROOT, screenshot
from tests.support.tinymodel import build_tiny_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EDIT = "The capital of France is Paris."


def _train_adapter(model, run_dir) -> subprocess.Popen:
    argv = [sys.executable, "-m", "studio", "train", str(ROOT / "recipes" / "lora_sft.yaml")]
    argv += ["--set", f"model={model}", "--set", "max_steps=3", "--run-dir", str(run_dir)]
    log = open(run_dir.parent / "lora.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _bot_text(page, pane: str) -> str:
    bots = page.locator(f"#{pane} .bot")
    return " ".join(bots.all_inner_texts()).strip()


def _pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(page.locator(f"#{elem_id} input")).to_have_value(option)


def _chat_and_vote(page, tiny) -> None:
    page.get_by_role("tab", name="Chat", exact=True).click()
    page.locator("#chat-base input").fill(str(tiny))
    expect(page.locator("#chat-a input")).to_have_value("base model (no adapter)")
    _pick(page, "chat-b", "lora1")
    page.get_by_text("System prompt and generation settings (both sides)").click()
    max_new = page.locator("#chat-max-new input[type=number]")
    max_new.fill("24")
    max_new.press("Enter")
    page.locator("#chat-prompt textarea").fill("What is the capital of France?")
    page.get_by_role("button", name="Send", exact=True).click()

    # both panes stream: text shows in each before the turn is over
    deadline = time.monotonic() + 60
    while not (_bot_text(page, "chat-left") and _bot_text(page, "chat-right")):
        assert time.monotonic() < deadline, "the two panes did not both show answer text"
        page.wait_for_timeout(200)
    expect(page.locator("#chat-reveal")).to_contain_text("Both answers are in", timeout=60_000)
    expect(page.locator("#chat-speed")).to_contain_text(re.compile(r"left: \d+ tokens, [\d.]+ tok/s"))
    assert "hidden until you vote" in page.locator("#chat-left").inner_text()
    screenshot(page, "chat")

    speed = page.locator("#chat-speed").inner_text()
    assert "(length)" not in speed and "(eos)" not in speed
    assert "finished" in speed or "stopped at the token limit" in speed
    left_answer = _bot_text(page, "chat-left")

    page.get_by_role("button", name="Left is better", exact=True).click()
    expect(page.locator("#chat-reveal")).to_contain_text("Vote #1 saved")
    expect(page.locator("#chat-reveal")).to_contain_text("lora1")  # names revealed after the vote
    expect(page.locator("#chat-left")).not_to_contain_text("hidden until you vote")  # pane titles too
    edit_box = page.locator("#chat-edit textarea")  # the edit starts from the chosen answer
    expect(edit_box).not_to_have_value("")
    assert edit_box.input_value().split()[:3] == left_answer.split()[:3]
    page.locator("#chat-edit textarea").fill(EDIT)
    page.get_by_role("button", name="Save my answer as the chosen one", exact=True).click()
    expect(page.locator("#chat-reveal")).to_contain_text("Your answer was saved as the chosen one")


def _export_and_save(page, studio_home) -> None:
    page.get_by_role("tab", name="Votes", exact=True).click()
    expect(page.locator("#votes-report")).to_contain_text("1 votes")
    expect(page.locator("#votes-table")).to_contain_text("What is the capital of France?")
    page.get_by_role("button", name="Export JSONL", exact=True).click()
    expect(page.locator("#votes-exported")).to_contain_text("Exported 1 DPO records")
    exported = studio_home / "exports" / "votes-dpo.jsonl"
    check = subprocess.run(
        [sys.executable, "-m", "studio", "data", "check", str(exported), "--method", "dpo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    page.locator("#votes-name textarea").fill("chat-votes")
    page.get_by_role("button", name="Save as dataset", exact=True).click()
    expect(page.locator("#votes-saved")).to_contain_text("Saved chat-votes (1 preference rows)")
    screenshot(page, "votes")


def test_chat_ab_vote_edit_export_and_dpo_run(studio_home, page, tmp_path, app):
    tiny = build_tiny_model(tmp_path / "tiny-llama")
    (studio_home / "runs").mkdir(exist_ok=True)
    training = _train_adapter(tiny, studio_home / "runs" / "lora1")
    server = app()  # starts while the adapter trains
    try:
        assert training.wait(timeout=180) == 0, (studio_home / "runs" / "lora.log").read_text()[-3000:]
        page.goto(server.url)
        _chat_and_vote(page, tiny)
        _export_and_save(page, studio_home)
    finally:
        server.kill()  # SIGKILL: what the UI stored must already be on disk

    [vote] = store.list_votes()
    assert vote.edited == EDIT and vote.verdict == vote.shown_first  # "Left is better": the one shown first
    assert (vote.adapter_a, vote.adapter_b) == ("", str(studio_home / "runs" / "lora1" / "adapter"))
    [record] = records.export_dpo()
    assert record["chosen"] == [{"role": "assistant", "content": EDIT}]

    sets = [f"model={tiny}", "dataset=chat-votes", "max_steps=2"]
    run_id = runs.submit(str(ROOT / "recipes" / "dpo.yaml"), sets, "dpo")
    deadline = time.monotonic() + 150
    while (state := runs.get(run_id).state) not in ("completed", "failed", "stopped"):
        runs.schedule()  # the app that would schedule it was stopped above
        assert time.monotonic() < deadline, f"DPO run stuck in {state}"
        time.sleep(1)
    assert state == "completed", rundir.log_tail(workspace.run_path(run_id))
    assert (runs.get(run_id).path / "adapter" / "adapter_config.json").is_file()
