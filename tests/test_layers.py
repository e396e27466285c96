"""The layering of docs/ARCHITECTURE.md, enforced on the whole import graph of `studio/`.

Each module has a layer; a module may import its own layer or lower ones, never a higher one.
Gradio only in studio/ui/; TRL only in studio/train/run.py; torch/transformers/TRL never at
module level in ui/, rundir.py or train/runs.py (the app imports those on every page).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

STUDIO = Path(__file__).resolve().parent.parent / "studio"

# Lowest first. A module's layer is that of its longest matching prefix.
LAYERS: dict[str, int] = {
    "studio.workspace": 0,
    "studio.processes": 0,
    "studio.rundir": 1,
    "studio.models": 1,
    "studio.ggufwriter": 1,
    "studio.data": 1,
    "studio.train.recipes": 2,
    "studio.train.memory": 2,
    "studio.train.autotune": 2,
    "studio.train.outcome": 2,
    "studio.train.fieldlabels": 2,
    "studio.train.pace": 2,
    "studio.train.lora_dropout": 2,
    "studio.train.lm_head": 2,
    "studio.train.preflight": 3,
    "studio.train.cluster": 3,
    "studio.train.callbacks": 3,
    "studio.train.setup": 3,
    "studio.train.tokenized": 3,
    "studio.train.probes": 3,
    "studio.chat.adapters": 2,
    "studio.chat.lean": 2,
    "studio.chat.decoding": 2,
    "studio.chat": 3,
    "studio.prefs": 3,
    "studio.chat.session": 4,
    "studio.prefs.records": 4,
    "studio.prefs.generate": 4,  # asks teacher endpoints through studio.serve.client
    "studio.prefs.report": 4,
    "studio.train.run": 4,
    "studio.train.runs": 4,
    "studio.train.warmup": 4,
    "studio.train.tune": 4,
    "studio.publish": 4,
    "studio.hubclient": 4,
    "studio.hubmodels": 4,
    "studio.data.hub": 4,
    "studio.serve": 4,
    "studio.evaluate": 4,
    "studio.data.commands": 5,
    "studio.train.commands": 5,
    "studio.prefs.commands": 5,
    "studio.publish.commands": 5,
    "studio.model_commands": 5,
    "studio.serve.commands": 5,
    "studio.evaluate.commands": 5,
    "studio.cli": 6,
    "studio.__main__": 6,
    "studio.ui": 7,
}
HEAVY = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes")
LIGHT_MODULES = ("studio.rundir", "studio.train.runs", "studio.ui")


def _module(path: Path) -> str:
    parts = list(path.relative_to(STUDIO.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int | None:
    best = None
    for prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return LAYERS[best] if best else None


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from studio.train import run` imports studio.train.run
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules() -> list[tuple[str, Path]]:
    return [(_module(p), p) for p in sorted(STUDIO.rglob("*.py"))]


def _upward_imports(modules: list[tuple[str, Path]]) -> list[str]:
    offenders = []
    for module, path in modules:
        own = _layer(module)
        for name in _imports(path):
            target = _layer(name) if name.startswith("studio") else None
            if own is not None and target is not None and target > own:
                offenders.append(f"{module} (layer {own}) imports {name} (layer {target})")
    return offenders


def test_every_module_has_a_layer():
    missing = [m for m, p in _modules() if p.name != "__init__.py" and _layer(m) is None]
    assert not missing, f"add these modules to LAYERS (and to docs/ARCHITECTURE.md): {missing}"


def test_imports_point_down():
    offenders = _upward_imports(_modules())
    assert not offenders, "upward imports:\n" + "\n".join(offenders)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "rundir.py"
    bad.write_text("from studio.train import run\n")
    offenders = _upward_imports([("studio.rundir", bad)])
    assert offenders == ["studio.rundir (layer 1) imports studio.train.run (layer 4)"]


def test_gradio_only_in_ui():
    offenders = [
        m
        for m, p in _modules()
        if not m.startswith("studio.ui")
        and any(n == "gradio" or n.startswith("gradio.") for n in _imports(p))
    ]
    assert not offenders, f"gradio imported outside studio/ui/: {offenders}"


def test_the_check_sees_a_gradio_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from gradio import Blocks\n")
    assert "gradio" in _imports(bad)


def test_only_the_trainer_imports_trl():
    offenders = [
        m
        for m, p in _modules()
        if m != "studio.train.run" and any(n == "trl" or n.startswith("trl.") for n in _imports(p))
    ]
    assert not offenders, f"TRL imported outside studio/train/run.py: {offenders}"


def test_light_modules_import_no_torch_at_module_level():
    offenders = [
        f"{m} imports {n}"
        for m, p in _modules()
        if any(m == light or m.startswith(light + ".") for light in LIGHT_MODULES)
        for n in _imports(p, top_level_only=True)
        if n.split(".")[0] in HEAVY
    ]
    assert not offenders, f"heavy imports at module level: {offenders}"


def test_building_the_page_loads_no_model_library(tmp_path):
    """The static check above cannot see a function the page calls while it is built (the Chat
    tab's memory line once imported torch: 2 s of every start). Build it and look."""
    probe = (
        "import sys; from studio.ui.app import build_app; build_app(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'trl', "
        "'peft', 'accelerate', 'datasets', 'llama_cpp', 'matplotlib'}))"
    )
    env = {**os.environ, "STUDIO_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=STUDIO.parent, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", f"the page build imported: {out.stdout[-500:]}"
