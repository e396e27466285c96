"""The Hub tab in a real browser: push a completed run to a stand-in Hub, see the repo and commit
as links, then a bad token and a bad repo id each give their message; the token never leaks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from studio.ui import hub_tab
from tests.support.app import screenshot
from tests.support.hubstub import HubStub
from tests.support.runfolder import build_run

GOOD = "hf_uiWriteTokenForTests0123456789wxyz"
BAD = "hf_uiNotARealToken00000000000000qqqq"
REPO = "tester/smol-ui"
REPO_FILES = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "loss_curve.png",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture
def stub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no real `hf auth login` leaks in
    with HubStub(tokens={GOOD: "write"}, log_path=tmp_path / "stub_access.log") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def hub_app(studio_home, tiny_model, stub, tmp_path, app):
    build_run(studio_home / "runs", tiny_model, recipe={"model": "default", "dataset": "tester/pairs"})
    env = {
        "HF_ENDPOINT": stub.url,
        "HF_TOKEN": "",
        "HF_HOME": str(tmp_path / "hf_home"),  # no real `hf auth login` leaks in
        "HF_HUB_OFFLINE": "1",  # as `make run` sets it: the push lifts it for itself
    }
    return app(env)


def _push(page, repo: str, token: str) -> None:
    page.get_by_label("Repo id", exact=True).fill(repo)
    page.get_by_label("Hugging Face token", exact=True).fill(token)
    page.get_by_role("button", name="Push to the Hub", exact=True).click()


@pytest.mark.browser
def test_push_from_the_hub_tab(hub_app, stub, page, studio_home, tmp_path):
    page.goto(hub_app.url)
    page.get_by_role("tab", name="Hub", exact=True).click()

    run = page.get_by_label("Run", exact=True)
    run.click()
    page.get_by_role("option", name=re.compile(r"^run-1 ")).click()
    expect(run).to_have_value(re.compile(r"^run-1 "))
    # The card preview shows what will be published, before any request.
    expect(page.get_by_text("PeftModel.from_pretrained", exact=False).first).to_be_visible()
    expect(page.get_by_text("No Hugging Face token", exact=False)).to_be_visible()
    token_box = page.get_by_label("Hugging Face token", exact=True)
    assert token_box.get_attribute("type") == "password"

    _push(page, REPO, GOOD)
    repo_url = f"{stub.url}/{REPO}"
    expect(page.get_by_role("link", name=repo_url, exact=True)).to_have_attribute("href", repo_url)
    assert len(stub.commits) == 1
    commit = stub.commits[0]
    assert set(commit.files) == REPO_FILES
    assert (
        commit.files["adapter_model.safetensors"]
        == (studio_home / "runs" / "run-1" / "adapter" / "adapter_model.safetensors").read_bytes()
    )
    assert stub.repos[REPO]["private"] is True
    commit_link = page.get_by_role("link", name=commit.oid[:12], exact=True)
    expect(commit_link).to_have_attribute("href", f"{repo_url}/commit/{commit.oid}")
    expect(page.get_by_text("Using hf_****wxyz from the token you entered.")).to_be_visible()
    screenshot(page, "hub")

    _push(page, REPO, BAD)
    expect(page.get_by_text("is invalid or expired (401)", exact=False).first).to_be_visible()
    expect(page.get_by_text("hf_****qqqq", exact=False).first).to_be_visible()
    assert len(stub.commits) == 1

    requests_before = len(stub.requests)
    _push(page, "not a repo", GOOD)
    expect(page.get_by_text("must look like 'your-username/model-name'", exact=False).first).to_be_visible()
    assert len(stub.requests) == requests_before

    page.get_by_role("button", name="Download adapter (.zip)", exact=True).click()
    expect(page.locator("a[href$='/run-1-adapter.zip']")).to_be_visible()
    assert (studio_home / "exports" / "run-1-adapter.zip").is_file()

    html = page.content()
    assert GOOD not in html and BAD not in html
    for secret in (GOOD, BAD):
        assert secret not in hub_app.log.read_text(errors="replace")
        assert secret not in (tmp_path / "stub_access.log").read_text()
        for path in studio_home.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"token leaked into {path}"
    assert not (studio_home / ".secrets" / "hf_token").exists()  # "remember" was not ticked


# --- the handlers without a browser ---------------------------------------------------------------
def test_run_choices_list_only_completed_runs_with_an_adapter(studio_home, tiny_model):
    build_run(studio_home / "runs", tiny_model, run_id="done", recipe={"dataset": "/data/mine.jsonl"})
    build_run(studio_home / "runs", tiny_model, run_id="busy", state="running")
    assert hub_tab.run_choices() == [("done · sft on mine.jsonl", "done")]
    update, note = hub_tab.on_refresh("gone")
    assert update["value"] == "done" and note == ""


def test_card_preview_follows_repo_id_and_what_is_pushed(studio_home, tiny_model):
    build_run(studio_home / "runs", tiny_model, recipe={"model": "default"})
    adapter = hub_tab.card_preview("run-1", "alice/my-model", hub_tab.ADAPTER)
    assert adapter.startswith("```yaml\nlibrary_name: peft\n")
    assert 'PeftModel.from_pretrained(base, "alice/my-model")' in adapter
    assert "](loss_curve.png)" not in adapter  # the image is shown beside the preview instead
    merged = hub_tab.card_preview("run-1", "not a repo", hub_tab.MERGED)
    assert "library_name: transformers" in merged and "your-username/run-1" in merged
    assert hub_tab.curve_image("run-1").endswith("run-1-loss_curve.png")
    assert hub_tab.card_preview("missing", "", hub_tab.ADAPTER).startswith("**No preview:** run")


def test_push_problems_become_messages_without_a_request(studio_home, tiny_model, stub):
    build_run(studio_home / "runs", tiny_model, run_id="busy", state="running")
    no_run, _ = hub_tab.on_push(None, "tester/x", True, hub_tab.ADAPTER, GOOD, False)
    unfinished, _ = hub_tab.on_push("busy", "tester/x", True, hub_tab.ADAPTER, GOOD, False)
    bad_id, _ = hub_tab.on_push("busy", "a/b/c", True, hub_tab.ADAPTER, GOOD, False)
    assert no_run.startswith("**Push failed:** pick a completed run first")
    assert "'running', not 'completed'" in unfinished
    assert "repo id 'a/b/c' must look like" in bad_id
    assert stub.requests == []
    assert hub_tab.repo_note("a/b/c").startswith("**Repo id:**") and hub_tab.repo_note("a/b") == ""


def test_unreachable_hub_says_push_again(studio_home, tiny_model, monkeypatch):
    build_run(studio_home / "runs", tiny_model)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    message, status = hub_tab.on_push("run-1", "tester/x", True, hub_tab.ADAPTER, GOOD, True)
    assert message.startswith("**Push failed:** could not reach the Hugging Face Hub")
    assert message.endswith("check the network and press Push again. Nothing was lost.")
    assert status == "Using hf_****wxyz from the token you entered." and GOOD not in message
    assert not (studio_home / ".secrets").exists()  # a failed login check remembers nothing


def test_export_buttons_give_a_file_or_a_message(studio_home, tiny_model):
    build_run(studio_home / "runs", tiny_model)
    shown, message = hub_tab.on_zip_adapter("run-1")
    assert shown["visible"] and shown["value"].endswith("run-1-adapter.zip")
    assert "run-1-adapter.zip" in message
    gguf, _ = hub_tab.on_gguf("run-1")
    assert Path(gguf["value"]).read_bytes()[:4] == b"GGUF"
    hidden, failed = hub_tab.on_zip_merged(None)
    assert hidden["visible"] is False and failed.startswith("**Export failed:** pick a completed run")


def test_sign_in_button_only_on_a_space(monkeypatch):
    import gradio as gr

    def login_buttons() -> int:
        with gr.Blocks() as demo:
            hub_tab.build_hub_tab()
        return sum(isinstance(b, gr.LoginButton) for b in demo.blocks.values())

    monkeypatch.delenv("SPACE_ID", raising=False)
    assert not hub_tab.sign_in_available() and login_buttons() == 0
    monkeypatch.setenv("SPACE_ID", "tester/tune-studio")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "client")
    monkeypatch.setattr(hub_tab.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(gr.routes, "attach_oauth", lambda app: None)  # no authlib installed here
    assert hub_tab.sign_in_available() and login_buttons() == 1


def test_push_with_the_space_sign_in_token(studio_home, tiny_model, stub):
    import gradio as gr

    build_run(studio_home / "runs", tiny_model)
    signed_in = gr.OAuthToken(token=GOOD, scope="openid profile write-repos", expires_at=0)
    assert hub_tab.token_line("", signed_in) == "Using hf_****wxyz from your Hugging Face sign-in."
    assert hub_tab.token_line(BAD, signed_in).startswith("Using hf_****qqqq from the token you entered")
    message, _ = hub_tab.on_push("run-1", REPO, False, hub_tab.ADAPTER, "", True, signed_in)
    assert message.startswith("**Pushed** the adapter (7 files, public repo)")
    assert len(stub.commits) == 1 and stub.repos[REPO]["private"] is False
    assert not (studio_home / ".secrets").exists()  # a sign-in token expires: never remembered
