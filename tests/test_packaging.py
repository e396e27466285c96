"""The project as others meet it: `pip install .` gives a working `tune-studio` command, and every
command line in the README parses with the real parser (so the README cannot drift from
`python -m studio --help`)."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from studio import cli

ROOT = Path(__file__).resolve().parent.parent


def _leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable command path, e.g. ("runs", "stop")."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [prefix]
    leaves = []
    for name, child in subs[0].choices.items():
        leaves += _leaf_commands(child, (*prefix, name))
    return leaves


def _readme_command_lines(readme: Path = ROOT / "README.md") -> list[str]:
    """`python -m studio ...` lines of the README's bash blocks, continuation lines joined."""
    text = readme.read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python -m studio "):
                lines.append(line)
    return lines


def _parse_all(lines: list[str]) -> None:
    parser = cli.build_parser()
    for line in lines:
        try:
            parser.parse_args(shlex.split(line)[3:])
        except SystemExit as exc:
            pytest.fail(f"README command does not parse ({exc.code}): {line}")


def test_every_readme_command_parses():
    lines = _readme_command_lines()
    assert len(lines) >= 15, lines
    _parse_all(lines)


def test_the_readme_check_sees_a_wrong_command(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("```bash\npython -m studio runs frobnicate x\n```\n")
    with pytest.raises(pytest.fail.Exception, match="frobnicate"):
        _parse_all(_readme_command_lines(readme))


def test_the_readme_shows_every_command():
    shown = {tuple(shlex.split(line)[3:]) for line in _readme_command_lines()}
    missing = [
        " ".join(leaf)
        for leaf in _leaf_commands(cli.build_parser())
        if not any(argv[: len(leaf)] == leaf for argv in shown)
    ]
    assert not missing, f"add an example of these commands to the README: {missing}"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for name in ("data", "train", "runs", "cluster", "votes", "push", "export"):
        assert re.search(rf"^\s+{name}\s", text, flags=re.M), name


@pytest.mark.slow
def test_pip_install_in_a_fresh_venv_gives_tune_studio(tmp_path):
    """`pip install .` from a copy of the project into a new venv, offline: the dependencies (and
    pip and setuptools themselves) are found through a .pth pointing at this environment's
    site-packages, so nothing is downloaded; the package itself must come from the wheel pip builds."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "studio", src / "studio", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "zz_studio_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-build-isolation",
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    run = subprocess.run(
        [str(venv / "bin" / "tune-studio"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "runs" in run.stdout and "export" in run.stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import studio.train.run, studio; print(studio.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout
    requires = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print('\\n'.join(m.requires('tune-studio')))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.split()
    pinned = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert sorted(r.replace(" ", "") for r in requires) == sorted(p.replace(" ", "") for p in pinned)
