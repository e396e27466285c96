"""Hub models and datasets against the stand-in Hub over real HTTP: search -> look -> download with
progress -> train -> chat; a cut download resumes; gated repos; a full disk; a Hub dataset previewed,
checked and saved; the Hub unreachable; the token nowhere it should not be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from studio import hubclient, hubmodels, models
from studio.data import check, store
from studio.data import hub as data_hub
from studio.publish import hub as publish_hub
from tests.support.hubrepos import model_repo, sample_dataset_repo
from tests.support.hubstub import HubStub

ROOT = Path(__file__).resolve().parent.parent
MODEL = "studio-test/tiny-chat"
GATED = "gated-org/tiny-gated"
DATASET = "studio-test/instructions"
GRANTED = "hf_granted_reader_token_1234"
NOT_GRANTED = "hf_other_reader_token_5678"


@pytest.fixture(scope="module")
def repos(tiny_model, tmp_path_factory):
    return [
        model_repo(MODEL, tiny_model, downloads=50, likes=3),
        model_repo(GATED, tiny_model, gated=True, granted={GRANTED}, license="llama3.2", downloads=10),
        sample_dataset_repo(DATASET, tmp_path_factory.mktemp("dataset")),
    ]


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub read HF_HUB_OFFLINE=1 at import (conftest): switch it on for this test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(Path(os.environ["STUDIO_HOME"]) / "hf_home"))  # no login token here


@pytest.fixture
def hub(repos, online, monkeypatch, tmp_path):
    with HubStub(
        tokens={GRANTED: "read", NOT_GRANTED: "read"}, served=repos, log_path=tmp_path / "access.log"
    ) as stub:
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        yield stub


def file_gets(stub: HubStub, name: str) -> list[str]:
    return [
        path for method, path in stub.requests if method == "GET" and (path.endswith(name) or "/cdn/" in path)
    ]


def test_pick_files_takes_one_set_of_weights():
    sizes = {
        "config.json": 1,
        "model-00001-of-00002.safetensors": 5,
        "model-00002-of-00002.safetensors": 5,
        "model.safetensors.index.json": 1,
        "pytorch_model.bin": 10,
        "model.gguf": 3,
        "onnx/model.onnx": 9,
        "original/consolidated.pth": 9,
        "tokenizer.json": 2,
    }
    assert list(hubmodels.pick_files(sizes)) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]
    assert "pytorch_model.bin" in hubmodels.pick_files({"config.json": 1, "pytorch_model.bin": 9})


def test_search_look_pull_train_chat(hub, tiny_model, tmp_path):
    found = hubmodels.search("tiny")
    assert [f.repo_id for f in found] == [MODEL, GATED]  # most downloaded first
    assert found[1].gated and not found[0].downloaded

    look = hubmodels.look(MODEL)
    served = {p: (tiny_model / p).stat().st_size for p in look.files}
    assert "model.safetensors" in look.files and look.files == served
    assert look.download_bytes == sum(served.values())
    assert look.license == "apache-2.0" and not look.gated and look.has_chat_template is True
    assert look.n_params == hub.served[0].safetensors_parameters()["F32"]
    assert set(look.fit) == {"LoRA", "QLoRA", "Full"} and all(v.startswith("fits") for v in look.fit.values())

    hub.throttle = 400_000  # slow enough to see progress between the polls
    events: list[hubclient.Progress] = []
    folder = hubmodels.pull(MODEL, events.append, every=0.05)
    assert events[0].state == "starting" and events[-1].state == "done"
    assert any(e.state == "downloading" and 0 < e.done_bytes < e.total_bytes for e in events)
    done = [e.done_bytes for e in events]
    assert done == sorted(done) and done[-1] == look.download_bytes
    assert any(e.speed > 0 for e in events) and "left" in " ".join(e.line() for e in events)
    for name in look.files:
        assert (folder / name).read_bytes() == (tiny_model / name).read_bytes()
    assert models.resolve(MODEL) == str(folder)
    assert MODEL in models.local_specs()
    assert [m.spec for m in hubmodels.local_models()] == ["default", MODEL]

    # Train a LoRA on the downloaded model, offline: the Hub id now names the local folder.
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "studio", "train", "recipes/lora_sft.yaml", "--run-dir", str(run_dir)]
    for item in (
        "model=" + MODEL,
        "max_steps=2",
        "data.max_length=256",
        "probes.prompts=[]",
        "data.eval_split=0",
    ):
        argv += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    from studio.chat import engine as chat

    engine = chat.ChatEngine()
    engine.load(MODEL)
    name = engine.add_adapter(run_dir)
    settings = chat.GenSettings(temperature=0, max_new_tokens=6, repetition_penalty=1.0)
    reply = list(
        engine.stream([{"role": "user", "content": "What is the capital of France?"}], name, settings)
    )[-1]
    assert (
        reply.tokens == 6 and reply.finish == "length"
    )  # the tuned model answers (random weights: no words)
    engine.unload()


@pytest.fixture(scope="module")
def medium_model(tmp_path_factory) -> Path:
    """~20 MB of weights: more than one of huggingface_hub's 10 MB write chunks, so a cut leaves some."""
    from tests.support.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("medium") / "medium", hidden=512)


def test_a_cut_download_resumes_without_fetching_again(online, monkeypatch, medium_model):
    repos = [model_repo(MODEL, medium_model)]
    size = (medium_model / "model.safetensors").stat().st_size
    folder = models.hub_model_dir(MODEL)
    part_glob = lambda: list((folder / ".partial").glob("model.safetensors.*.part"))  # noqa: E731
    failed: list[Exception] = []
    with HubStub(served=repos, throttle=5_000_000) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        worker = threading.Thread(target=lambda: _pull_into(failed, []), daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in part_glob()) and time.monotonic() < deadline:
            time.sleep(0.02)
        hub.cut()  # the connection drops mid-transfer and the server stays away
        port = hub.port
    worker.join(60)
    assert failed and isinstance(failed[0], hubclient.HubUnreachable), failed
    had = part_glob()[0].stat().st_size
    assert 0 < had < size
    assert MODEL not in models.downloaded_ids()  # half a model is not offered for training
    assert "incomplete" in hubmodels.local_models()[1].state

    with HubStub(served=repos, port=port) as again:  # the Hub is back (as after an app restart)
        hubmodels.pull(MODEL)
        assert ("model.safetensors", f"bytes={had}-") in again.ranges
        assert again.body_bytes["model.safetensors"] == size - had  # only the missing part travelled
    assert (folder / "model.safetensors").read_bytes() == (medium_model / "model.safetensors").read_bytes()
    assert MODEL in models.downloaded_ids() and not part_glob()


def _pull_into(failed: list, events: list) -> None:
    try:
        hubmodels.pull(MODEL, events.append, every=0.05)
    except Exception as exc:  # the test inspects it
        failed.append(exc)


def test_gated_model_needs_a_token_with_access(hub, monkeypatch):
    look = hubmodels.look(GATED)
    assert look.gated and look.license == "llama3.2" and look.has_chat_template is None
    assert "accept its license" in look.access and "token with read access" in look.access
    with pytest.raises(hubclient.HubError, match="accept its license"):
        hubmodels.pull(GATED)
    assert not file_gets(hub, "model.safetensors")  # refused before any weight was fetched

    monkeypatch.setenv("HF_TOKEN", NOT_GRANTED)
    with pytest.raises(hubclient.HubError, match="no access yet"):
        hubmodels.pull(GATED)
    monkeypatch.delenv("HF_TOKEN")

    publish_hub.remember_token(GRANTED)  # the token the Hub tab stores
    folder = hubmodels.pull(GATED)
    assert (folder / "model.safetensors").is_file()
    assert hub.cdn_auth == []  # the token never left the Hub's origin for the file storage
    assert_token_nowhere(GRANTED, Path(os.environ["STUDIO_HOME"]), hub.log_path)


def assert_token_nowhere(token: str, home: Path, *extra: Path) -> None:
    """The token's text appears in no file of the workspace but .secrets/hf_token, nor in `extra`."""
    files = [p for p in home.rglob("*") if p.is_file() and ".secrets" not in p.parts] + list(extra)
    leaks = [str(p) for p in files if token.encode() in p.read_bytes()]
    assert not leaks, f"token found in {leaks}"


def test_full_disk_is_refused_before_downloading(hub, monkeypatch):
    import shutil

    real = shutil.disk_usage

    def tiny_disk(path):
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1_000_000, 1_000_000)

    monkeypatch.setattr(hubclient.shutil, "disk_usage", tiny_disk)
    with pytest.raises(
        hubclient.HubError, match="not enough disk space: the download needs .* and 1.0 MB are free"
    ):
        hubmodels.pull(MODEL)
    assert not file_gets(hub, "model.safetensors")
    assert not models.hub_model_dir(MODEL).exists()


def test_hub_dataset_previewed_checked_and_saved(hub):
    assert data_hub.search("instr") == [DATASET] and data_hub.search("nothing-like-it") == []
    found = data_hub.layout(DATASET)
    assert found.configs == {
        "default": {
            "train": ["data/train-00000-of-00001.parquet"],
            "test": ["data/test-00000-of-00001.parquet"],
        }
    }
    rows = data_hub.preview(DATASET, split="train", rows=3)
    sample = [json.loads(line) for line in (ROOT / "sample_data" / "alpaca.jsonl").read_text().splitlines()]
    assert rows == sample[:3]
    data_gets = [(m, p) for m, p in hub.requests if "train-00000" in p]
    assert data_gets and all(m == "GET" for m, _ in data_gets)
    assert len(hub.ranges) == len(data_gets)  # every read was a Range read: nothing downloaded whole

    events: list[hubclient.Progress] = []
    path, kept = data_hub.pull(
        DATASET, split="train", rows=10, sample=True, seed=1, on_progress=events.append
    )
    assert "random sample of 10" in kept and events[-1].state == "done"
    report = check.load(path)
    assert report.format == "alpaca" and report.kind == "sft" and report.rows == 10
    assert all(r in [{**s} for s in sample] for r in map(json.loads, path.read_text().splitlines()))
    entry = store.save("hub-instructions", report.records, report.kind, report.format, str(path))
    assert entry.name in [e.name for e in store.list_saved()]

    first, kept = data_hub.pull(DATASET, split="test", rows=2)
    assert "the first 2" in kept and [json.loads(x) for x in first.read_text().splitlines()] == sample[33:35]


def test_unreachable_hub_says_so_in_one_line(online, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    for call in (
        lambda: hubmodels.search("qwen"),
        lambda: hubmodels.look(MODEL),
        lambda: data_hub.layout(DATASET),
    ):
        with pytest.raises(hubclient.HubUnreachable) as caught:
            call()
        assert "cannot be reached" in str(caught.value) and "\n" not in str(caught.value)
    assert "cannot be reached" in hubclient.status_line()
    assert hubmodels.local_models()[0].spec == "default"  # the rest works

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hubclient.HubUnreachable, match="HF_HUB_OFFLINE=1"):
        hubmodels.search("qwen")


def test_command_line_twins(hub, studio_home, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_TOKEN": GRANTED, "PYTHONUNBUFFERED": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "studio", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = cli("models", "search", "tiny")
    assert out.returncode == 0 and MODEL in out.stdout and "gated" in out.stdout, out.stderr
    out = cli("models", "info", GATED)
    assert (
        out.returncode == 0
        and "gated, and your token has access" in out.stdout
        and "QLoRA: fits" in out.stdout
    )
    assert "model.safetensors" in out.stdout, out.stderr
    out = cli("models", "pull", GATED)
    assert out.returncode == 0 and "is ready" in out.stdout and "done:" in out.stdout, out.stderr
    out = cli("models", "list")
    assert GATED in out.stdout and "ready" in out.stdout
    out = cli("models", "rm", GATED)
    assert out.returncode == 0 and "freed" in out.stdout and not models.hub_model_dir(GATED).exists()
    out = cli("models", "rm", GATED)
    assert out.returncode == 1 and "not downloaded" in out.stderr
    out = cli("data", "pull", DATASET, "--split", "test", "--rows", "5", "--name", "hub-test")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Alpaca format" in out.stdout and "saved 5 sft rows as 'hub-test'" in out.stdout
    assert "hub-test" in [e.name for e in store.list_saved()]
    for text in (out.stdout, out.stderr):
        assert GRANTED not in text
    assert_token_nowhere(GRANTED, studio_home, hub.log_path)


@pytest.mark.slow
def test_the_default_model_served_as_safetensors_downloads_and_answers(default_model, online, monkeypatch):
    """The real model through the whole path: details, a 538 MB download, then it answers."""
    repo = model_repo("studio-test/smollm2-135m-instruct", Path(default_model), downloads=9)
    with HubStub(served=[repo]) as stub:
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        look = hubmodels.look(repo.repo_id)
        assert look.n_params == models.info(default_model).n_params == 134_515_008
        assert look.has_chat_template and look.download_bytes == sum(
            (Path(default_model) / n).stat().st_size for n in look.files
        )
        assert "model.safetensors" in look.files and "studio_source.json" not in look.files
        folder = hubmodels.pull(repo.repo_id)
    assert (folder / "model.safetensors").stat().st_size == (
        Path(default_model) / "model.safetensors"
    ).stat().st_size

    from studio.chat import engine as chat

    engine = chat.ChatEngine()
    engine.load(repo.repo_id)
    settings = chat.GenSettings(temperature=0, max_new_tokens=12, repetition_penalty=1.0)
    reply = list(
        engine.stream([{"role": "user", "content": "What is the capital of France?"}], None, settings)
    )[-1]
    engine.unload()
    assert "Paris" in reply.text
