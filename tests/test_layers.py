"""The layering of DESIGN.md, enforced: imports point down, Gradio only in studio/ui/."""

from __future__ import annotations

import ast
from pathlib import Path

STUDIO = Path(__file__).resolve().parent.parent / "studio"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_gradio_only_in_ui():
    offenders = []
    for path in STUDIO.rglob("*.py"):
        if "ui" in path.relative_to(STUDIO).parts[:1]:
            continue
        if any(name == "gradio" or name.startswith("gradio.") for name in _imports(path)):
            offenders.append(str(path.relative_to(STUDIO.parent)))
    assert not offenders, f"gradio imported outside studio/ui/: {offenders}"


def test_the_check_sees_a_gradio_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from gradio import Blocks\n")
    assert "gradio" in _imports(bad)


def test_core_never_imports_ui():
    offenders = [
        str(p.relative_to(STUDIO.parent))
        for p in STUDIO.rglob("*.py")
        if "ui" not in p.relative_to(STUDIO).parts[:1] and any(n.startswith("studio.ui") for n in _imports(p))
    ]
    assert not offenders, f"core modules import the UI layer: {offenders}"


def test_only_train_imports_trl_trainers():
    offenders = [
        str(p.relative_to(STUDIO.parent))
        for p in STUDIO.rglob("*.py")
        if p.name != "train.py" and any(n == "trl" or n.startswith("trl.") for n in _imports(p))
    ]
    assert not offenders, f"TRL imported outside studio/train.py: {offenders}"
