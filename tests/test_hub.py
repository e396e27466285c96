"""Pushing a run to the Hub, against a local stand-in Hub: files, card, token handling, errors, CLI."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from studio.publish import hub
from tests.support.hubstub import HubStub
from tests.support.runfolder import build_run

GOOD = "hf_writeTokenForTests0123456789abcd"
READ_ONLY = "hf_readOnlyTokenForTests987654wxyz"
ROOT = Path(__file__).resolve().parent.parent
ADAPTER_REPO_FILES = {
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
    with HubStub(tokens={GOOD: "write", READ_ONLY: "read"}, log_path=tmp_path / "stub_access.log") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def run_dir(studio_home, tiny_model) -> Path:
    return build_run(studio_home / "runs", tiny_model, recipe={"model": "default", "dataset": "tester/pairs"})


def _front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---", 2)[1])


def _assert_no_token_under(folder: Path, token: str, skip: Path | None = None) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and path != skip:
            assert token.encode() not in path.read_bytes(), f"token leaked into {path}"


def test_push_commits_exactly_the_files_that_belong(stub, run_dir):
    result = hub.push(run_dir, "tester/smol-sft", token=GOOD)

    assert len(stub.commits) == 1
    commit = stub.commits[0]
    assert set(commit.files) == ADAPTER_REPO_FILES
    assert (
        commit.files["adapter_model.safetensors"]
        == (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    )
    assert commit.files["loss_curve.png"].startswith(b"\x89PNG")
    config = json.loads(commit.files["adapter_config.json"])
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert stub.repos["tester/smol-sft"]["private"] is True
    assert result.repo_url == f"{stub.url}/tester/smol-sft"
    assert result.commit_id == commit.oid
    assert result.commit_url == f"{stub.url}/tester/smol-sft/commit/{commit.oid}"
    assert list(hub.workspace.exports_dir().iterdir()) == []  # the staging folder is cleaned up


def test_model_card_front_matter_and_content(stub, run_dir):
    hub.push(run_dir, "tester/smol-sft", token=GOOD)
    readme = stub.commits[0].files["README.md"].decode()

    meta = _front_matter(readme)
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"sft", "trl", "tune-studio"} <= set(meta["tags"])
    assert meta["datasets"] == ["tester/pairs"]
    assert meta["license"] == "apache-2.0"
    assert "![Training loss](loss_curve.png)" in readme
    assert "final training loss: 0.7000" in readme and "final eval loss: 1.1000" in readme
    assert 'PeftModel.from_pretrained(base, "tester/smol-sft")' in readme
    assert "`lora.r`: 4" in readme
    assert "I am not sure." in readme and "The capital of France is Paris." in readme
    assert str(run_dir.parent) not in readme  # no local paths published


def test_local_dataset_and_base_stay_out_of_front_matter(stub, studio_home, tiny_model):
    run = build_run(
        studio_home / "runs", tiny_model, recipe={"dataset": str(studio_home / "datasets" / "mine.jsonl")}
    )
    hub.push(run, "tester/local", token=GOOD, private=False)
    files = stub.commits[0].files
    meta = _front_matter(files["README.md"].decode())
    assert "datasets" not in meta and "base_model" not in meta
    assert str(studio_home) not in files["README.md"].decode()
    assert str(tiny_model) not in files["adapter_config.json"].decode()
    assert stub.repos["tester/local"]["private"] is False


def test_merged_push_sends_a_plain_model(stub, studio_home, tiny_model):
    run = build_run(studio_home / "runs", tiny_model)
    hub.push(run, "tester/merged", token=GOOD, merged=True)
    files = set(stub.commits[0].files)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "loss_curve.png"} <= files
    assert not files & {"adapter_config.json", "adapter_model.safetensors"}
    assert _front_matter(stub.commits[0].files["README.md"].decode())["library_name"] == "transformers"


def test_full_fine_tune_pushes_the_whole_model(stub, studio_home, tiny_model):
    import shutil

    run = build_run(studio_home / "runs", tiny_model, recipe={"lora": {"enabled": False}})
    shutil.rmtree(run / "adapter")
    shutil.copytree(tiny_model, run / "adapter")
    hub.push(run, "tester/full", token=GOOD)
    files = set(stub.commits[0].files)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    assert _front_matter(stub.commits[0].files["README.md"].decode())["library_name"] == "transformers"


def test_token_is_written_nowhere_but_the_secret_file(stub, run_dir, studio_home, tmp_path):
    result = hub.push(run_dir, "tester/smol-sft", token=GOOD, remember=True)

    secret = studio_home / ".secrets" / "hf_token"
    assert secret.read_text().strip() == GOOD
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    _assert_no_token_under(studio_home, GOOD, skip=secret)
    assert GOOD not in (tmp_path / "stub_access.log").read_text()
    assert GOOD not in repr(result)
    assert all(GOOD.encode() not in data for data in stub.commits[0].files.values())
    # The remembered token is found next time without being passed in, and shown masked.
    assert hub.token_status() == "Using hf_****abcd from the token saved in the studio."
    hub.forget_token()
    assert not secret.exists()


def test_mask_token():
    assert hub.mask_token(GOOD) == "hf_****abcd"
    assert hub.mask_token("short") == "****"
    assert hub.mask_token(None) == "(none)"


@pytest.mark.parametrize(
    "bad", ["no-slash", "a/b/c", "tester/has space", "tester/bad--name", "/x", "t/" + "x" * 97]
)
def test_invalid_repo_id_fails_before_any_request(stub, run_dir, bad):
    with pytest.raises(hub.HubError, match="repo id"):
        hub.push(run_dir, bad, token=GOOD)
    assert stub.requests == []


def test_invalid_token_is_named_and_masked(stub, run_dir):
    bad = "hf_notARealToken000000000000000zzzz"
    with pytest.raises(hub.HubError) as info:
        hub.push(run_dir, "tester/smol-sft", token=bad)
    message = str(info.value)
    assert "invalid" in message and "401" in message and "hf_****zzzz" in message
    assert bad not in message and not info.value.retryable
    assert stub.commits == []


def test_read_only_token_is_refused_before_creating_the_repo(stub, run_dir):
    with pytest.raises(hub.HubError, match="read-only") as info:
        hub.push(run_dir, "tester/smol-sft", token=READ_ONLY)
    assert READ_ONLY not in str(info.value)
    assert stub.repos == {} and stub.commits == []


def test_forbidden_namespace_gives_a_403_message(stub, run_dir):
    with pytest.raises(hub.HubError, match=r"may not write to 'someone-else/model' \(403\)"):
        hub.push(run_dir, "someone-else/model", token=GOOD)
    assert stub.commits == []


def test_missing_token_says_how_to_get_one(stub, run_dir):
    with pytest.raises(hub.HubError, match="No Hugging Face token.*HF_TOKEN"):
        hub.push(run_dir, "tester/smol-sft")
    assert stub.requests == []


def test_token_comes_from_hf_token(stub, run_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GOOD)
    assert hub.token_status() == "Using hf_****abcd from HF_TOKEN."
    hub.push(run_dir, "tester/smol-sft")
    assert len(stub.commits) == 1


def test_unreachable_hub_is_retryable(run_dir, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(hub.HubError) as info:
        hub.push(run_dir, "tester/smol-sft", token=GOOD)
    message = str(info.value)
    assert message.startswith(f"could not reach the Hugging Face Hub at http://127.0.0.1:{port}: ")
    assert message.endswith("check the network and press Push again")
    assert info.value.retryable and GOOD not in message


def test_unfinished_run_is_refused(stub, studio_home, tiny_model):
    run = build_run(studio_home / "runs", tiny_model, state="running")
    with pytest.raises(ValueError, match="'running', not 'completed'"):
        hub.push(run, "tester/smol-sft", token=GOOD)
    assert stub.requests == []


def test_zip_export_holds_adapter_and_card(run_dir):
    import zipfile

    path = hub.export_zip(run_dir)
    assert path.parent == hub.workspace.exports_dir() and path.name == "run-1-adapter.zip"
    assert set(zipfile.ZipFile(path).namelist()) == ADAPTER_REPO_FILES


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "studio", "push", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_push_against_the_stub(stub, run_dir, studio_home, tmp_path):
    env = {**os.environ, "HF_TOKEN": GOOD, "HF_HUB_OFFLINE": "1"}
    done = _cli([str(run_dir), "tester/cli-model", "--public"], env)

    assert done.returncode == 0, done.stderr
    commit = stub.commits[0]
    assert f"{stub.url}/tester/cli-model" in done.stdout and commit.oid in done.stdout
    assert set(commit.files) == ADAPTER_REPO_FILES and stub.repos["tester/cli-model"]["private"] is False

    failed = _cli(["run-1", "tester/cli-model"], {**env, "HF_TOKEN": "hf_wrongwrongwrongwrong0000"})
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr
    assert "invalid" in failed.stderr and "hf_****0000" in failed.stderr

    bad_id = _cli(["run-1", "not a repo"], env)
    assert bad_id.returncode == 1 and "repo id" in bad_id.stderr
    for text in (done.stdout, done.stderr, failed.stdout, bad_id.stdout, bad_id.stderr):
        assert GOOD not in text
    _assert_no_token_under(studio_home, GOOD)
    assert GOOD not in (tmp_path / "stub_access.log").read_text()
