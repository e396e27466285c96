"""The live views in a real browser: curves that draw from the first logged step and grow, lists
that show what the workspace holds whenever their tab is shown, Stop/Resume only where they apply.

Run folders are written by hand (the run-folder contract in studio/rundir.py), so the tests watch
the views without paying for a training run.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from playwright.sync_api import expect

from studio import rundir
from studio.data import store
from studio.prefs import store as votes
from tests.support.app import screenshot

pytestmark = [pytest.mark.browser]


def _run(home, run_id: str, state: str, method: str = "sft", created: str = ""):
    created = created or (datetime.now(UTC) - timedelta(minutes=3)).isoformat()
    run = home / "runs" / run_id
    run.mkdir(parents=True)
    recipe = {"method": method, "model": "default", "dataset": "sample:alpaca.jsonl", "max_steps": 10}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    now = datetime.now(UTC).isoformat()
    status = {"state": state, "step": 0, "max_steps": 10, "started_at": created, "ended_at": now}
    (run / "status.json").write_text(json.dumps(status))
    (run / "launch.json").write_text(json.dumps({"created_at": created, "method": method, "sets": []}))
    (run / "metrics.jsonl").write_text("")
    return run


def _legend(page, plot: str) -> list[str]:
    return page.locator(f"#{plot} .role-legend-label text").all_text_contents()


def _legend_shown(page, plot: str) -> bool:
    """Every legend entry lies inside its plot's block: none is clipped off below the axes."""
    block = page.locator(f"#{plot}").bounding_box()
    labels = page.locator(f"#{plot} .role-legend-label text")
    boxes = [labels.nth(i).bounding_box() for i in range(labels.count())]
    return bool(boxes) and all(b and b["y"] + b["height"] <= block["y"] + block["height"] for b in boxes)


def _lines(page, plot: str) -> int:
    """Drawn line paths: at least two points (an 'M x,y L x,y' path) and a colour to draw them in."""
    paths = page.locator(f"#{plot} .mark-line path")
    drawn = 0
    for i in range(paths.count()):
        d, stroke = paths.nth(i).get_attribute("d") or "", paths.nth(i).get_attribute("stroke") or ""
        drawn += "L" in d and stroke not in ("", "none", "transparent")
    return drawn


def _wait(page, check, timeout_s: float = 30) -> None:
    for _ in range(int(timeout_s * 4)):
        if check():
            return
        page.wait_for_timeout(250)
    assert check()


def test_curves_draw_from_the_first_steps_and_grow(studio_home, page, app):
    run = _run(studio_home, "dpo-run", "completed", method="dpo")
    server = app()
    page.goto(server.url)
    page.get_by_role("tab", name="Runs", exact=True).click()
    expect(page.locator("#run-progress")).to_contain_text("dpo-run")
    page.wait_for_timeout(2500)  # a tick or two with no metrics yet: the plots start empty

    for step in (1, 2):
        rundir.append_metrics(run, {"step": step, "loss": 2.0 - 0.2 * step, "learning_rate": 1e-4})
        rundir.append_metrics(run, {"step": step, "rewards/margins": 0.1 * step, "rewards/accuracies": 0.5})
    _wait(page, lambda: _lines(page, "runs-loss") >= 1 and _lines(page, "runs-pref") >= 2)
    assert _legend(page, "runs-loss") == ["train loss", "eval loss"]
    assert _legend(page, "runs-pref") == ["reward margin", "accuracy"]
    assert _legend_shown(page, "runs-loss") and _legend_shown(page, "runs-pref")
    assert "series" not in page.locator("#runs-loss").inner_text()  # no column name as a legend title
    assert _lines(page, "runs-loss") == 1  # no eval loss logged yet

    rundir.append_metrics(run, {"step": 3, "loss": 1.2, "eval_loss": 1.4})
    rundir.append_metrics(run, {"step": 4, "loss": 1.1, "eval_loss": 1.3})
    _wait(page, lambda: _lines(page, "runs-loss") == 2)  # the eval curve joins the plot
    screenshot(page, "runs-live-curves")

    # a completed run can be neither stopped nor resumed, and a Stop that cannot be pressed is not red
    stop = page.get_by_role("button", name="Stop", exact=True)
    expect(stop).to_be_disabled()
    expect(stop).to_have_class(re.compile(r"\bsecondary\b"))
    expect(page.get_by_role("button", name="Resume", exact=True)).to_be_disabled()


def test_every_list_shows_the_workspace_when_its_tab_is_shown(studio_home, page, app):
    _run(studio_home, "old-run", "stopped")
    server = app()
    page.goto(server.url)
    page.get_by_role("tab", name="Runs", exact=True).click()
    expect(page.locator("#run-progress")).to_contain_text("old-run")
    expect(page.get_by_role("button", name="Resume", exact=True)).to_be_enabled()
    expect(page.locator("#runs-loss")).to_be_visible()
    expect(page.locator("#runs-pref")).to_be_hidden()  # an SFT run has no reward curves to show
    for tab in (
        "Train",
        "Chat",
        "Rate pairs",
        "Votes",
        "Hub",
        "API",
    ):  # each seen once, before anything exists
        page.get_by_role("tab", name=tab, exact=True).click()

    # meanwhile (another tab, a terminal): a dataset saved, a run finished, a vote cast, a launch
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    store.save("my-notes", rows, "sft", "messages", "test")
    done = _run(studio_home, "finished-run", "completed")
    (done / "adapter").mkdir()
    (done / "adapter" / "adapter_config.json").write_text("{}")
    rundir.rename(done, "house-style-v2")  # every tab names it so, not by its folder id
    votes.record_vote([{"role": "user", "content": "hi"}], "a", "b", "A")
    _run(studio_home, "new-run", "queued", created=datetime.now(UTC).isoformat())

    page.get_by_role("tab", name="Train", exact=True).click()
    page.locator("#train-dataset input").click()
    expect(page.get_by_role("option", name="my-notes", exact=True)).to_be_visible()
    page.keyboard.press("Escape")

    page.get_by_role("tab", name="Chat", exact=True).click()
    page.locator("#chat-b input").click()
    expect(page.get_by_role("option", name="house-style-v2", exact=True)).to_be_visible()
    page.keyboard.press("Escape")

    page.get_by_role("tab", name="Rate pairs", exact=True).click()
    page.get_by_text("Make pairs: two answers for every prompt").click()
    page.get_by_label("Adapter B", exact=True).click()
    expect(page.get_by_role("option", name="house-style-v2", exact=True)).to_be_visible()
    page.keyboard.press("Escape")

    page.get_by_role("tab", name="API", exact=True).click()
    page.locator("#serve-adapters input").click()
    expect(
        page.get_by_role("option", name='house-style-v2 (model "finished-run")', exact=True)
    ).to_be_visible()
    page.keyboard.press("Escape")

    page.get_by_role("tab", name="Votes", exact=True).click()
    expect(page.locator("#votes-report")).to_contain_text("1 votes")

    page.get_by_role("tab", name="Hub", exact=True).click()
    expect(page.locator("#hub-run input")).to_have_value("house-style-v2 · sft on sample:alpaca.jsonl")

    page.get_by_role("tab", name="Runs", exact=True).click()  # the new run is selected
    expect(page.locator("#run-progress")).to_contain_text("new-run", timeout=15_000)
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_enabled()
    expect(page.get_by_role("button", name="Stop", exact=True)).to_have_class(re.compile(r"\bstop\b"))
    for name in ("Refresh dataset list", "Refresh adapters", "Refresh", "↻"):
        assert page.get_by_role("button", name=name, exact=True).count() == 0


def test_votes_table_shows_run_names_and_local_times(studio_home, page, app):
    model, adapter = "/models/SmolLM2-135M-Instruct", str(studio_home / "runs" / "house-style" / "adapter")
    vote = votes.record_vote(
        [{"role": "user", "content": "hi"}], "a", "b", "B", model_a=model, model_b=model, adapter_b=adapter
    )
    [stored] = votes.list_votes()
    local = datetime.fromisoformat(stored.created_at).astimezone().strftime("%Y-%m-%d %H:%M")
    server = app()
    page.goto(server.url)
    page.get_by_role("tab", name="Votes", exact=True).click()
    table = page.locator("#votes-table")
    expect(table).to_contain_text("SmolLM2-135M-Instruct + house-style")
    expect(table).to_contain_text(local)
    assert "/models/" not in table.inner_text() and "+00:00" not in table.inner_text()
    assert page.locator("#votes-delete-id input").input_value() == ""  # starts empty, not 0
    assert vote == stored.id
    screenshot(page, "votes-names")
