"""The Data tab in a real browser, walked as a user does: upload a file with a broken row (every
problem of that row named), see which dataset is active, read a record as a chat with the system
prompt the template injects explained, switch to the exact tokens, read the legend and the length
histogram, save, see the save's message next to its button and not on another tab (and a
warning of another tab likewise), pick a sample
of preference pairs, and see a bad file explained."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.support.app import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROWS = [
    {"instruction": "Name a primary colour.", "output": "Short answer: Red.\nWhy: it cannot be mixed."},
    {"instruction": "What is 2 + 2?", "input": "", "output": "Short answer: 4.\nWhy: two pairs make four."},
    {"instruction": "", "output": 5},  # two problems in one row: empty instruction, a number as output
]


def _x_ticks(page) -> list[float]:
    labels = page.locator("#data-lengths g[id^=xtick] text").evaluate_all(
        "els => els.map(e => e.textContent)"
    )
    return [float(t.replace("−", "-")) for t in labels if t.strip()]


def _legend(page) -> list[str]:
    return page.locator("#data-legend .entry").all_inner_texts()


def test_data_tab_walk(studio_home, default_model_home, page, tmp_path, app):
    shutil.copytree(default_model_home / "models", studio_home / "models")  # no 20 s conversion
    upload = tmp_path / "house-style.jsonl"
    upload.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    server = app()
    page.goto(server.url)
    page.locator("input[type=file]").first.set_input_files(str(upload))
    report = page.locator("#data-report")
    report.get_by_text("Alpaca format", exact=False).wait_for(timeout=90_000)
    text = report.inner_text()
    assert "3 rows read, 2 usable" in text
    assert 'line 3, field "instruction": is empty' in text and 'line 3, field "output": is number' in text

    # the active dataset is the upload, and the picker no longer names another one
    active = page.locator("#data-active")
    assert "house-style.jsonl" in active.inner_text() and "your upload" in active.inner_text()
    assert page.locator("#data-choice input").input_value() == ""

    # a chat: the template's system prompt is marked as not from the data, the answer as trained
    chat = page.locator("#data-chat")
    chat.locator(".turn.assistant[data-kind=trained]").filter(has_text="Short answer: Red.").wait_for()
    assert chat.locator(".turn.system.injected").filter(has_text="SmolLM").count() == 1
    note = page.locator("#data-system-note").inner_text()
    assert "comes from the model's chat template" in note and "system message" in note
    assert "<|im_start|>" not in chat.inner_text()
    assert _legend(page) == ["trained (carries the loss)", "not trained (read only)"]

    # the histogram's axis ends near the longest example (a few dozen tokens), not at 1024
    ticks = _x_ticks(page)
    assert ticks and max(ticks) < 150, ticks
    assert "past the longest" in page.locator("#data-lengths").inner_text()
    screenshot(page, "data")

    # the exact tokens, one toggle away
    page.get_by_label("Show exact tokens").check()
    tokens = page.locator("#data-preview")
    tokens.locator(".token.highlighted").filter(has_text="Short answer: Red.").first.wait_for()
    assert "<|im_start|>" in tokens.inner_text()
    masked = tokens.locator(".text.unlabeled").filter(has_text="Name a primary colour.")
    assert masked.count() == 1, "the prompt is shown, dimmed, and carries no loss"
    assert tokens.locator(".token.highlighted").filter(has_text="Name a primary").count() == 0
    assert not chat.is_visible()
    screenshot(page, "data-tokens")
    page.get_by_label("Show exact tokens").uncheck()

    # saving: the message sits under the Save button, and stays on this tab
    page.get_by_label("Save as").fill("house-style")
    button = page.get_by_role("button", name="Save dataset", exact=True)
    button.click()
    saved_note = page.locator("#data-save-note")
    saved_note.get_by_text("Saved house-style", exact=False).wait_for()
    below = saved_note.bounding_box()["y"] - button.bounding_box()["y"]
    assert 0 < below < 150, f"the message is {below}px from its button"
    assert page.locator(".toast-body").count() == 0, "no floating toast"
    assert "house-style" in active.inner_text() and "a saved dataset" in active.inner_text()
    records = [
        json.loads(line) for line in (studio_home / "datasets" / "house-style.jsonl").read_text().splitlines()
    ]
    assert len(records) == 2 and records[0]["messages"][-1] == {
        "role": "assistant",
        "content": ROWS[0]["output"],
    }
    page.get_by_role("tab", name="Train").click()
    page.wait_for_timeout(300)
    assert not saved_note.is_visible()
    assert page.get_by_text("Saved house-style", exact=False).filter(visible=True).count() == 0
    page.get_by_role("tab", name="Data").click()
    assert saved_note.is_visible()

    # app-wide: a warning from another tab's handler (gr.Warning) shows under its button, no toast
    page.get_by_role("tab", name="Votes").click()
    delete = page.get_by_role("button", name="Delete vote", exact=True)
    delete.click()
    warning = page.locator(".studio-notice.warning").filter(has_text="Pick the vote to delete first")
    warning.wait_for()
    below = warning.bounding_box()["y"] - delete.bounding_box()["y"]
    assert 0 < below < 150, f"the warning is {below}px from its button"
    assert not page.locator(".toast-body").first.is_visible()
    page.get_by_role("tab", name="Data").click()
    assert not warning.is_visible()

    # preference pairs from the picker: chosen and rejected have their own colours and legend
    page.locator("#data-choice input").click()
    page.get_by_role("option", name="sample:dpo.jsonl").click()
    active.get_by_text("dpo.jsonl").wait_for()
    assert "a sample" in active.inner_text()
    page.locator("#data-chat .turn[data-kind=rejected]").first.wait_for()
    assert _legend(page) == ["chosen answer", "rejected answer", "not trained (read only)"]
    swatches = page.locator("#data-legend .swatch")
    colours = {swatches.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(2)}
    assert len(colours) == 2
    screenshot(page, "data-pairs")

    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    page.goto(server.url)
    page.locator("input[type=file]").first.set_input_files(str(bad))
    page.get_by_text("Cannot use this file", exact=False).or_(page.get_by_text("line 2")).first.wait_for()
    assert "Traceback" not in page.content()
    assert not (studio_home / "datasets" / "broken.jsonl").exists()
