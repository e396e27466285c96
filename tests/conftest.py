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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinymodel import build_tiny_model  # noqa: E402


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
