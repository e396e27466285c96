"""Shared fixtures: an isolated STUDIO_HOME per test, the tiny model, the real default model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: one math thread each (inherited by the
    # trainers and apps they start), so the two never fight over the cores.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.app import CHROMIUM, CHROMIUM_ARGS, AppServer, screenshot  # noqa: E402,F401
from tests.support.tinymodel import build_tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def studio_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty workspace."""
    home = tmp_path / "studio_home"
    home.mkdir()
    monkeypatch.setenv("STUDIO_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Folder of a tiny random Llama with a ChatML template (a valid model spec)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_model_no_template(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_nt") / "tiny-llama-nt", chat_template=False)


@pytest.fixture(scope="session")
def default_model_home() -> Path:
    """A STUDIO_HOME shared by the whole session holding the converted default model.

    Converting the embedded GGUF takes ~20 s; doing it once per session keeps the suite short.
    Tests that use the real model point STUDIO_HOME here (or copy from `models/`).
    """
    home = Path(os.environ.get("STUDIO_TEST_MODEL_HOME", ROOT / ".pytest_model_home"))
    home.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("STUDIO_HOME")
    os.environ["STUDIO_HOME"] = str(home)
    try:
        from studio import models

        models.default_model_dir()
    finally:
        if old is None:
            os.environ.pop("STUDIO_HOME", None)
        else:
            os.environ["STUDIO_HOME"] = old
    return home


@pytest.fixture
def default_model(default_model_home, studio_home) -> str:
    """The real default model as a local-folder spec, usable from any test's STUDIO_HOME."""
    return str(default_model_home / "models" / "SmolLM2-135M-Instruct")


@pytest.fixture
def app(studio_home):
    """The one way tests start the app: `app(env=None)` starts `python app.py` on this test's
    STUDIO_HOME (start it again after a kill to test a restart); every server is killed at the end."""
    servers: list[AppServer] = []

    def start(env: dict | None = None) -> AppServer:
        server = AppServer(studio_home, env=env).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


@pytest.fixture(scope="session")
def default_tuned_run(default_model_home, tmp_path_factory) -> Path:
    """The guided path's quick run on the real default model and the sample data: the plan
    `python -m studio tune sample:alpaca.jsonl` and the Train tab's "Plan my run" make, with the first
    five held-out questions as probes. Shared by the proofs that need a tuned adapter (the quick
    plan visibly teaches, A/B chat, evaluation, serving, pairs), so it is paid for once."""
    import fcntl

    # Under `make test` two pytest-xdist workers may both need it: they share one run through a lock
    # in the session's common temporary folder, so it is trained once (the second worker waits).
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    run_dir = shared / "default_tuned_run" / "run"
    with open(shared / "default_tuned_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / "plan.json").is_file():  # written last, once the run completed
            _train_the_quick_plan(default_model_home, run_dir)
    return run_dir


def _train_the_quick_plan(default_model_home: Path, run_dir: Path) -> None:
    import json
    import shutil
    import subprocess

    shutil.rmtree(run_dir.parent, ignore_errors=True)  # what a failed attempt left
    home = run_dir.parent / "home"
    home.mkdir(parents=True)
    model = str(default_model_home / "models" / "SmolLM2-135M-Instruct")
    old = os.environ.get("STUDIO_HOME")
    os.environ["STUDIO_HOME"] = str(home)
    try:
        from studio.train import tune

        plan = tune.plan("sample:alpaca.jsonl", model, "style", "quick")
        sets = tune.sets_for(plan, "sample:alpaca.jsonl", model)
    finally:
        if old is None:
            os.environ.pop("STUDIO_HOME", None)
        else:
            os.environ["STUDIO_HOME"] = old
    prompts = [
        p for p in (ROOT / "sample_data" / "heldout_prompts.txt").read_text().splitlines() if p.strip()
    ]
    sets += ["probes.prompts=" + json.dumps(prompts[:5]), "probes.max_new_tokens=24"]
    argv = [sys.executable, "-m", "studio", "train", plan.recipe, "--run-dir", str(run_dir)]
    for item in sets:
        argv += ["--set", item]
    env = {**os.environ, "STUDIO_HOME": str(home)}
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir / "plan.json").write_text(json.dumps({"steps": plan.steps, "sets": sets}))
