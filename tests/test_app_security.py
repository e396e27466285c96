"""The app binds loopback by default and refuses a public address without a password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402


def test_default_host_is_loopback(monkeypatch):
    monkeypatch.delenv("STUDIO_HOST", raising=False)
    monkeypatch.delenv("STUDIO_AUTH", raising=False)
    assert app.parse_args([]).host == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_public_host_without_password_is_refused(host, monkeypatch, capsys):
    monkeypatch.delenv("STUDIO_AUTH", raising=False)
    with pytest.raises(SystemExit) as exc:
        app.parse_args(["--host", host])
    assert exc.value.code == 2
    assert "without a password" in capsys.readouterr().err


def test_public_host_with_password_is_allowed(monkeypatch):
    monkeypatch.setenv("STUDIO_AUTH", "ana:s3cret-pass")
    args = app.parse_args(["--host", "0.0.0.0"])
    assert args.host == "0.0.0.0" and args.auth == "ana:s3cret-pass"


def test_malformed_auth_is_refused(capsys):
    with pytest.raises(SystemExit):
        app.parse_args(["--auth", "no-colon-here"])
    assert "USER:PASSWORD" in capsys.readouterr().err


def test_refusal_from_the_real_command_line(studio_home):
    env = {"PATH": "/usr/bin:/bin", "STUDIO_HOME": str(studio_home)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0" in result.stderr
    assert "Traceback" not in result.stderr
