"""The Train tab's guided path in a real browser: sample data, goal "style", quick budget, "Plan my
run" -> each choice with its reason and a measured time estimate; Advanced shows the same recipe
with plain labels; switching method says what it changed; Start training -> the run's progress,
then the run completes and shows in the Runs tab."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.support.app import screenshot

expect.set_options(timeout=30_000)
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_guided_plan_estimate_advanced_and_start(studio_home, tiny_model, page, app):
    server = app()
    page.goto(server.url)
    page.get_by_role("tab", name="Train", exact=True).click()
    model = page.locator("#train-model input")
    model.fill(str(tiny_model))
    model.press("Enter")
    expect(page.locator("#train-dataset input")).to_have_value("sample:alpaca.jsonl")
    page.get_by_label("Teach answers in my style and format", exact=True).check()
    page.get_by_label("Quick (about 5 min)", exact=True).check()
    page.get_by_role("button", name="Plan my run", exact=True).click()

    rate = page.locator("#train-plan .plan-choice[data-field='training.learning_rate']")
    expect(rate).to_contain_text("How big each learning step is", timeout=120_000)  # plain words first
    expect(rate).to_contain_text("small models take bigger steps")  # the reason
    expect(rate.locator(".plan-hint")).to_have_text("training.learning_rate")  # the technical name
    assert page.locator("#train-plan .plan-choice").count() >= 9
    estimate = page.locator("#train-estimate")
    expect(estimate).to_contain_text("on this machine (measured:", timeout=180_000)
    minutes = re.search(r"(under a minute|about \d+ min)", estimate.inner_text(), re.IGNORECASE)
    assert minutes, estimate.inner_text()
    steps_row = page.locator("#train-plan .plan-choice[data-field='training.max_steps']")
    steps = steps_row.locator(".plan-value").inner_text()
    assert f"× {steps} steps" in estimate.inner_text()
    rate_value = rate.locator(".plan-value").inner_text()
    screenshot(page, "train-guided")

    page.get_by_text("Advanced: every setting of the recipe").click()
    expect(page.get_by_label("Learning rate (step size)", exact=True)).to_have_value(rate_value)
    expect(page.get_by_label("Training length (steps)", exact=True)).to_have_value(steps)
    expect(page.get_by_label("Recipe", exact=True)).to_have_value("LoRA SFT")  # a name, not a path
    expect(page.get_by_text("Adapter (LoRA)", exact=True)).to_be_visible()  # sections in words

    page.get_by_label("What it learns (method)", exact=True).click()
    page.get_by_role("option", name="dpo", exact=True).click()
    changed = page.locator("#train-changed")
    expect(changed).to_contain_text("Switched to the DPO recipe, which changed:")
    expect(changed).to_contain_text(f"Training length (steps) {steps} → ")
    expect(page.get_by_label("Recipe", exact=True)).to_have_value("DPO")
    screenshot(page, "train-advanced")

    page.get_by_label("What it learns (method)", exact=True).click()
    page.get_by_role("option", name="sft", exact=True).click()
    expect(changed).to_contain_text("Switched to the DoRA SFT recipe")  # the first SFT recipe
    page.get_by_label("Recipe", exact=True).click()
    page.get_by_role("option", name="LoRA SFT", exact=True).click()
    # the pick's answer refills every field: edit only after it arrived, or it overwrites the edit
    expect(changed).to_contain_text("Switched to the LoRA SFT recipe")
    page.get_by_label("Training length (steps)", exact=True).fill("6")  # Advanced edits what Start runs
    page.get_by_role("button", name="Start training", exact=True).click()
    run = page.locator("#guided-run")
    expect(run).to_contain_text(re.compile(r"step \d+ of 6\b"), timeout=60_000)
    expect(run).to_contain_text(re.compile(r"sft-alpaca-\d{8}-\d{4}"))  # the run's name, not its folder id
    page.locator("#guided-run[data-state='completed']").wait_for(timeout=240_000)
    expect(run).to_contain_text("took")

    run_dir = next(p for p in (studio_home / "runs").iterdir() if p.is_dir())
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == 6
    assert status["step_seconds"] > 0 and status["seconds_left"] == 0  # the pace the trainer wrote
    page.get_by_role("tab", name="Runs", exact=True).click()
    page.locator("#run-progress .run-state[data-state='completed']").wait_for(timeout=30_000)


def test_fields_stay_locked_until_a_picked_recipe_has_refilled_them(studio_home, page, app):
    """A pick of recipe refills every field when the server answers; a value typed before that would
    be overwritten without a word. Here the answer is held back: the fields are locked (the user's
    typing goes nowhere and the section is dimmed), then refilled and editable again."""
    from studio.ui.train_recipe import recipe_title

    FULL = recipe_title("recipes/full_sft.yaml")  # noqa: N806 - its 40 steps differ from QLoRA's 60
    server = app()
    page.goto(server.url)
    page.get_by_role("tab", name="Train", exact=True).click()
    page.get_by_text("Advanced: every setting of the recipe").click()
    steps = page.get_by_label("Training length (steps)", exact=True)
    expect(page.get_by_label("Recipe", exact=True)).to_have_value("QLoRA SFT")
    before = steps.input_value()
    assert before != "40", "the full fine-tune recipe must change this field for the test to see a refill"

    held = []
    page.route("**/queue/join*", lambda route: held.append(route))  # requests wait here until released
    page.get_by_label("Recipe", exact=True).click()
    page.get_by_role("option", name=FULL, exact=True).click()
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the pick sent nothing to the server"
    advanced = page.locator("#train-advanced")
    assert advanced.evaluate("box => box.inert"), "the fields are not locked while the pick is pending"
    expect(advanced).to_have_class(re.compile(r"\bstudio-refilling\b"))
    steps.focus()  # Tab reaches the field (a click meets the loading overlay) and the person types
    page.keyboard.type("7")
    expect(steps).to_have_value(before)
    screenshot(page, "train-refilling")

    for request in held:
        request.continue_()
    page.unroute("**/queue/join*")
    expect(page.locator("#train-changed")).to_contain_text(f"Switched to the {FULL} recipe")
    expect(steps).to_have_value("40")
    expect(advanced).not_to_have_class(re.compile(r"\bstudio-refilling\b"))
    assert not advanced.evaluate("box => box.inert")
    steps.fill("7")
    expect(steps).to_have_value("7")
