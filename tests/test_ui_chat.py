"""From a finished run to the proof, in a real browser: a LoRA run of the tiny model queued as the
Train tab does, its Runs view (name, what happened in words, probe cards asked from the held-out
split), "Chat with it" (base and adapter loaded side by side, a probe question ready), both panes
streaming, a blind vote and an edited answer shown in the conversation, then the Votes tab exports
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
from studio.train import outcome, probes, runs
from tests.support.app import ROOT, screenshot
from tests.support.tinymodel import build_tiny_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EDIT = "The capital of France is Paris."


def _wait_completed(run_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (state := runs.get(run_id).state) not in ("completed", "failed", "stopped"):
        assert time.monotonic() < deadline, f"run stuck in {state}"
        time.sleep(1)
    assert state == "completed", rundir.log_tail(workspace.run_path(run_id))


def _bot_text(page, pane: str) -> str:
    bots = page.locator(f"#{pane} .bot")
    return " ".join(bots.all_inner_texts()).strip()


def _runs_view_to_chat(page, run_id: str) -> str:
    """The finished run in the Runs tab, then "Chat with it"; returns the run's name."""
    run = workspace.run_path(run_id)
    asked = rundir.read_probes(run)["prompts"]
    assert asked and not set(asked) & set(probes.STARTER_PROBES)  # the user's kind of question
    page.get_by_role("tab", name="Runs", exact=True).click()
    name = page.locator("#run-name :is(input, textarea)")
    # method + dataset, not a timestamp
    expect(name).to_have_value(re.compile(r"sft-alpaca-\d{8}-\d{4}"), timeout=20_000)
    expect(page.locator("#run-summary")).to_contain_text(outcome.summarize(run).text)
    expect(page.locator("#run-summary")).to_contain_text(
        re.compile(r"loss (fell from|rose from|stayed near) [\d.]+")
    )
    expect(page.locator("#run-summary")).to_contain_text("'Short answer:'")  # the training answers' opening
    cards = page.locator("#run-probes .probe-card")
    expect(cards).to_have_count(len(asked))
    expect(cards.first).to_contain_text(asked[0])
    after = " ".join(rundir.read_probes(run)["after"][0].split())
    expect(cards.first.locator(".probe-after")).to_contain_text(after[:20] or "(no answer)")
    assert cards.first.bounding_box()["x"] + cards.first.bounding_box()["width"] <= 1400  # on screen
    expect(page.locator("#runs-table")).to_contain_text(name.input_value())
    screenshot(page, "runs-finished")
    run_name = name.input_value()

    page.get_by_role("button", name="Chat with it", exact=True).click()
    expect(page.locator("#chat-prompt textarea")).to_have_value(asked[0])  # a probe question, ready
    expect(page.locator("#chat-a input")).to_have_value("base model (no adapter)")
    expect(page.locator("#chat-b input")).to_have_value(run_name)
    expect(page.locator("#chat-sides")).to_contain_text(
        f"Model B: {run_name}, learned from sample:alpaca.jsonl"
    )
    expect(page.locator("#chat-left")).to_contain_text("Left: base model (no adapter)")
    expect(page.locator("#chat-right")).to_contain_text(f"Right: {run_name}")
    expect(page.locator("#chat-memory")).to_contain_text("+ 1 adapter(s)", timeout=60_000)  # loaded
    # the LoRA run and its base both answer on the fast CPU path, and the page says so
    expect(page.locator("#chat-paths")).to_have_text("Both sides answer with llama.cpp (fastest on this CPU)")
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_hidden()  # nothing is answering
    screenshot(page, "chat-with-run")
    return run_name


def _chat_and_vote(page, tiny, run_name: str) -> None:
    expect(page.locator("#chat-base input")).to_have_value(str(tiny))  # the run's own base model
    page.get_by_label("Blind A/B: shuffle the sides each turn and hide the names until I vote").check()
    page.get_by_text("System prompt and generation settings (both sides)").click()
    max_new = page.locator("#chat-max-new input[type=number]")
    max_new.fill("24")
    max_new.press("Enter")
    page.locator("#chat-prompt textarea").fill("What is the capital of France?")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_visible()  # while it answers

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
    expect(page.locator("#chat-reveal")).to_contain_text(run_name)  # names revealed after the vote
    expect(page.locator("#chat-left")).not_to_contain_text("hidden until you vote")  # pane titles too
    edit_box = page.locator("#chat-edit textarea")  # the edit starts from the chosen answer
    expect(edit_box).not_to_have_value("")
    assert edit_box.input_value().split()[:3] == left_answer.split()[:3]
    page.locator("#chat-edit textarea").fill(EDIT)
    page.get_by_role("button", name="Save my answer as the chosen one", exact=True).click()
    expect(page.locator("#chat-reveal")).to_contain_text("Your answer was saved as the chosen one")
    expect(page.locator("#chat-reveal")).to_contain_text("Vote #1 saved")  # the same vote, not renumbered
    for pane in ("#chat-left", "#chat-right"):  # the saved answer shows in the conversation
        expect(page.locator(f"{pane} .bot").last).to_contain_text(f"(edited) {EDIT}")
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_hidden()
    screenshot(page, "chat-edited")


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
    # queued as the Train tab queues it (recipe + overrides); the app's scheduler starts it
    run_id = runs.submit("recipes/lora_sft.yaml", [f"model={tiny}", "max_steps=3"], "sft")
    runs.schedule()  # it trains while the app starts
    server = app()
    try:
        _wait_completed(run_id)
        page.goto(server.url)
        run_name = _runs_view_to_chat(page, run_id)
        _chat_and_vote(page, tiny, run_name)
        _export_and_save(page, studio_home)
    finally:
        server.kill()  # SIGKILL: what the UI stored must already be on disk

    [vote] = store.list_votes()
    assert vote.edited == EDIT and vote.verdict == vote.shown_first  # "Left is better": the one shown first
    assert (vote.adapter_a, vote.adapter_b) == ("", str(studio_home / "runs" / run_id / "adapter"))
    [record] = records.export_dpo()
    assert record["chosen"] == [{"role": "assistant", "content": EDIT}]

    sets = [f"model={tiny}", "dataset=chat-votes", "max_steps=2"]
    dpo_id = runs.submit(str(ROOT / "recipes" / "dpo.yaml"), sets, "dpo")
    deadline = time.monotonic() + 150
    while (state := runs.get(dpo_id).state) not in ("completed", "failed", "stopped"):
        runs.schedule()  # the app that would schedule it was stopped above
        assert time.monotonic() < deadline, f"DPO run stuck in {state}"
        time.sleep(1)
    assert state == "completed", rundir.log_tail(workspace.run_path(dpo_id))
    assert (runs.get(dpo_id).path / "adapter" / "adapter_config.json").is_file()
