"""The Data tab in a real browser: upload a file, read the report, see the highlighted preview
with the default model's template, save the dataset, and see a bad file explained."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.support.app import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_upload_preview_and_save(studio_home, default_model_home, page, tmp_path, app):
    shutil.copytree(default_model_home / "models", studio_home / "models")  # no 20 s conversion
    upload = tmp_path / "house-style.jsonl"
    rows = [
        {"instruction": "Name a primary colour.", "output": "Short answer: Red.\nWhy: it cannot be mixed."},
        {
            "instruction": "What is 2 + 2?",
            "input": "",
            "output": "Short answer: 4.\nWhy: two pairs make four.",
        },
        {"instruction": "Translate 'cat' to French.", "output": ""},  # empty answer: a row problem
    ]
    upload.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    server = app()
    try:
        page.goto(server.url)
        page.locator("input[type=file]").first.set_input_files(str(upload))
        report = page.get_by_text("Alpaca format", exact=False).first
        report.wait_for(timeout=90_000)
        assert "3 rows read, 2 usable" in page.content()
        assert "line 3" in page.content() and "output" in page.content()
        trained = page.locator("#data-preview .token.highlighted").filter(has_text="Short answer: Red.")
        trained.first.wait_for(timeout=30_000)
        masked = page.locator("#data-preview .text.unlabeled").filter(has_text="Name a primary colour.")
        assert masked.count() == 1, "the prompt is shown, dimmed, and carries no loss"
        assert page.locator("#data-preview .token.highlighted").filter(has_text="Name a primary").count() == 0
        screenshot(page, "data")

        page.get_by_label("Save as").fill("house-style")
        page.get_by_role("button", name="Save dataset", exact=True).click()
        page.get_by_text("Saved house-style").or_(page.get_by_text("Saved **house-style**")).first.wait_for()
        saved = studio_home / "datasets" / "house-style.jsonl"
        records = [json.loads(line) for line in saved.read_text().splitlines()]
        assert len(records) == 2
        assert records[0]["messages"][-1] == {"role": "assistant", "content": rows[0]["output"]}

        bad = tmp_path / "broken.jsonl"
        bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
        page.goto(server.url)
        page.locator("input[type=file]").first.set_input_files(str(bad))
        page.get_by_text("Cannot use this file", exact=False).or_(page.get_by_text("line 2")).first.wait_for()
        assert "Traceback" not in page.content()
        assert not (studio_home / "datasets" / "broken.jsonl").exists()
    finally:
        server.kill()
