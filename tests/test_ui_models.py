"""The Models tab and the Data tab's Hub section in a real browser, against the stand-in Hub over real
HTTP: search -> details (size, license, fit) -> download with a progress bar -> train on it; a gated
model with the token the Hub tab stores; a Hub dataset looked at, downloaded, checked and saved."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from studio.publish import hub as publish_hub
from tests.support.app import screenshot
from tests.support.hubrepos import model_repo, sample_dataset_repo
from tests.support.hubstub import HubStub
from tests.support.tinymodel import build_tiny_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = "studio-test/small-chat"
GATED = "gated-org/tiny-gated"
DATASET = "studio-test/instructions"
TOKEN = "hf_reader_token_for_the_browser_test_9876"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    small = build_tiny_model(tmp_path_factory.mktemp("m64") / "tiny64", hidden=64)  # NF4 wants 64-wide layers
    # ~20 MB: huggingface_hub writes 10 MB at a time, so the bar visibly stops half-way
    medium = build_tiny_model(tmp_path_factory.mktemp("m512") / "medium", hidden=512)
    return [
        model_repo(MODEL, medium, downloads=40),
        model_repo(GATED, small, gated=True, granted={TOKEN}, license="llama3.2", downloads=20),
        sample_dataset_repo(DATASET, tmp_path_factory.mktemp("ds")),
    ]


@pytest.fixture
def online_app(served, studio_home, tmp_path, app):
    with HubStub(
        tokens={TOKEN: "read"}, served=served, throttle=4_000_000, log_path=tmp_path / "access.log"
    ) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_TOKEN": ""}
        server = app(env)
        try:
            yield hub, server
        finally:
            server.kill()  # before the stand-in Hub stops


def _wait_run_completed(page, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        span = page.locator("#run-progress .run-state")
        if span.count():
            state = span.first.get_attribute("data-state") or ""
            if state in ("completed", "failed"):
                break
        page.wait_for_timeout(700)
    assert state == "completed", f"run ended {state!r}"


def test_search_details_download_then_train(online_app, page, studio_home):
    hub, server = online_app
    page.goto(server.url)
    page.get_by_role("tab", name="Train", exact=True).click()
    page.get_by_role("button", name="Search the Hub for a model…").filter(visible=True).click()
    page.get_by_text(f"The Hub answers at {hub.url}").wait_for()  # the model field opened the Models tab
    page.locator("#models-query textarea").fill("te")  # both repos
    page.get_by_role("button", name="Search", exact=True).click()
    results = page.locator("#models-results")
    results.get_by_text(MODEL, exact=True).filter(visible=True).first.wait_for()
    assert results.get_by_text(GATED, exact=True).filter(visible=True).count() >= 1
    results.get_by_text(MODEL, exact=True).filter(visible=True).first.click()
    details = page.locator("#models-details")
    details.get_by_text("QLoRA: fits (").wait_for()
    text = details.inner_text()
    assert "parameters; download" in text and "License: apache-2.0; not gated" in text
    assert "Chat template: has a chat template" in text
    screenshot(page, "models-details")

    page.locator("#models-download").click()
    progress = page.locator("#models-progress .studio-progress")
    progress.and_(page.locator("[data-state='downloading']")).wait_for(timeout=30_000)
    for _ in range(100):  # a bar part-way along makes a useful picture
        match = re.search(r"of .* \((\d+)%\)", progress.inner_text())
        if match and 20 <= int(match.group(1)) < 100 or page.locator("[data-state='done']").count():
            break
        page.wait_for_timeout(100)
    assert match and "MB/s" in progress.inner_text(), progress.inner_text()
    screenshot(page, "models-downloading")
    page.locator("#models-progress [data-state='done']").wait_for(timeout=60_000)
    page.locator("#models-local").get_by_text(MODEL, exact=True).filter(visible=True).first.wait_for()
    screenshot(page, "models-local")

    page.get_by_role("tab", name="Train", exact=True).click()
    page.locator("#train-model input").fill(MODEL)
    page.locator("#train-model input").press("Enter")
    page.get_by_text("Advanced: every setting of the recipe").click()  # the recipe field by field
    page.get_by_label("Training length (steps)", exact=True).fill("3")
    page.get_by_role("button", name="Check recipe", exact=True).click()
    page.get_by_text("Memory:", exact=False).first.wait_for(timeout=60_000)
    assert f'model="{MODEL}"' in page.locator("#train-command .cm-content").inner_text()
    page.get_by_role("button", name="Launch run", exact=True).click()
    page.get_by_text(re.compile(r"Run \*?\*?\d{8}-\d{6}-sft")).first.wait_for(timeout=30_000)
    page.get_by_role("tab", name="Runs", exact=True).click()
    _wait_run_completed(page)
    runs = [p for p in (studio_home / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "adapter" / "adapter_model.safetensors").is_file()
    assert f"model: {MODEL}" in (runs[0] / "recipe.yaml").read_text()


def test_gated_model_with_the_stored_token_and_delete(served, studio_home, page, tmp_path, app):
    publish_hub.remember_token(TOKEN)  # what the Hub tab's "remember" does
    with HubStub(tokens={TOKEN: "read"}, served=served, log_path=tmp_path / "access.log") as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_TOKEN": ""}
        server = app(env)
        try:
            page.goto(server.url)
            page.get_by_role("tab", name="Models", exact=True).click()
            page.locator("#models-repo textarea").fill(GATED)
            page.get_by_role("button", name="Show details", exact=True).click()
            page.locator("#models-details").get_by_text("gated, and your token has access").wait_for()
            page.locator("#models-download").click()
            page.locator("#models-progress [data-state='done']").wait_for(timeout=60_000)
            page.locator("#models-local").get_by_text(GATED, exact=True).filter(visible=True).first.wait_for()

            page.get_by_label("Delete a downloaded model").click()
            page.get_by_role("option", name=GATED).click()
            page.get_by_role("button", name="Delete…", exact=True).click()
            page.get_by_text(f"Delete {GATED} and free").wait_for()
            screenshot(page, "models-delete-confirm")
            page.locator("#models-confirm-delete").click()
            page.get_by_text(f"Deleted {GATED}").wait_for()
            assert not (studio_home / "models" / "hub" / "gated-org--tiny-gated").exists()

            html = page.content()
            cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
        finally:
            server.kill()
    assert TOKEN not in html and TOKEN.encode() not in cmdline
    assert hub.cdn_auth == []
    leaks = [
        str(p)
        for p in [*studio_home.rglob("*"), hub.log_path]
        if p.is_file() and ".secrets" not in p.parts and TOKEN.encode() in p.read_bytes()
    ]
    assert not leaks, leaks  # app.log, the workspace, the stand-in's access log


def test_hub_dataset_in_the_data_tab(default_model, studio_home, online_app, page):
    hub, server = online_app
    (studio_home / "models").mkdir(exist_ok=True)
    (studio_home / "models" / Path(default_model).name).symlink_to(
        default_model
    )  # converted once per session
    page.goto(server.url)
    page.get_by_text("…or take one from the Hugging Face Hub").click()
    page.get_by_label("Search datasets").fill("instructions")
    page.get_by_role("button", name="Search", exact=True).click()
    page.get_by_text("1 datasets: pick one").wait_for()
    page.locator("#data-hub-found input").click()
    page.get_by_role("option", name=DATASET).click()
    expect(page.locator("#data-hub-id textarea")).to_have_value(DATASET)
    page.get_by_role("button", name="Look at it", exact=True).click()
    preview = page.locator("#data-hub-preview")
    preview.get_by_text("What is the boiling point of water at sea level?").filter(
        visible=True
    ).first.wait_for()
    page.get_by_text("read without downloading the files").wait_for()
    page.get_by_label("Rows to keep (N)").fill("12")
    page.get_by_text("a random sample of N rows").click()
    page.locator("#data-hub-pull").click()
    page.get_by_text("kept a random sample of 12").wait_for(timeout=60_000)
    page.get_by_text("Alpaca format, SFT data; 12 rows read").wait_for(timeout=60_000)
    page.get_by_label("Save as").fill("hub-instructions")
    page.get_by_role("button", name="Save dataset", exact=True).click()
    page.get_by_text("Saved hub-instructions: 12 sft rows").wait_for()
    screenshot(page, "data-hub")
