"""What the studio protects, tested from outside: files served, uploads, names, YAML, the token, login.

Loopback binding and the refusal of a public address without a password are in
tests/test_app_security.py; here the app runs for real (AppServer) and is probed over HTTP.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from studio import rundir, workspace
from studio.data import store
from studio.train import runs
from tests.support.app import AppServer

TOKEN = "hf_" + "Zq7" * 12  # looks like a real token, unique enough to grep for
RECIPE = "recipes/lora_sft.yaml"


def _get(url: str, data: bytes | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("sec_home")
    secrets = home / ".secrets"
    secrets.mkdir()
    (secrets / "hf_token").write_text(TOKEN)
    (home / "exports").mkdir()
    (home / "exports" / "ok.txt").write_text("shareable")
    app = AppServer(home, env={"HF_TOKEN": TOKEN}).start()
    yield app
    app.kill()


@pytest.mark.parametrize("target", ["studio.db", ".secrets/hf_token", "/etc/passwd", "runs", "../etc/passwd"])
def test_files_outside_exports_are_refused(server, target):
    path = target if target.startswith("/") else str(server.home / target)
    status = _get(f"{server.url}gradio_api/file={path}")
    assert status in (403, 404), f"{target} served with {status}"


def test_exports_are_served(server):
    assert _get(f"{server.url}gradio_api/file={server.home / 'exports' / 'ok.txt'}") == 200


def test_oversized_upload_is_refused(server, tmp_path):
    from studio.ui.app import MAX_UPLOAD

    limit = int(MAX_UPLOAD.removesuffix("mb")) * 1024 * 1024
    boundary = "studioboundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.jsonl"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
    body = head + b"x" * (limit + 1024) + f"\r\n--{boundary}--\r\n".encode()
    status = _get(f"{server.url}gradio_api/upload", body,
                  {"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    assert status == 413, status
    small = head + b'{"a": 1}\n' + f"\r\n--{boundary}--\r\n".encode()
    assert _get(f"{server.url}gradio_api/upload", small,
                {"Content-Type": f"multipart/form-data; boundary={boundary}"}) == 200  # fmt: skip


def test_token_is_in_no_page(server):
    for path in ("", "config", "gradio_api/info"):
        with urllib.request.urlopen(server.url + path, timeout=60) as resp:
            assert TOKEN not in resp.read().decode("utf-8", "replace"), path
    assert TOKEN not in Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode()
    for path in server.home.rglob("*"):  # app.log, studio.db, ... (the secrets file is the test's own)
        if path.is_file() and ".secrets" not in path.parts:
            assert TOKEN.encode() not in path.read_bytes(), f"the token leaked into {path}"


@pytest.mark.parametrize(
    "name", ["../x", "..", "a/b", "/etc/passwd", "a;rm -rf /", "$(id)", "`id`", "a b", "", ".hidden",
             "x" * 81, "a\x00b", "a\nb", "名前", "C:\\x"],
)  # fmt: skip
def test_untrusted_names_never_become_paths(name):
    for fn in (workspace.dataset_path, workspace.run_path, runs.get, store.delete):
        with pytest.raises(ValueError, match="not allowed"):
            fn(name)
    with pytest.raises(ValueError):
        store.save(name, [{"messages": []}], "sft", "alpaca", "x.jsonl")
    assert not any(workspace.home().rglob("*passwd*"))


def test_token_in_no_file_log_or_argv_of_a_run(tiny_model, monkeypatch, studio_home):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    sets = [f"model={tiny_model}", "max_steps=3", "training.save_steps=2", "data.eval_split=0",
            "probes.prompts=[]"]  # fmt: skip
    run_id = runs.submit(RECIPE, sets, "sft")
    deadline, seen_argv = time.monotonic() + 180, False
    while time.monotonic() < deadline:
        runs.schedule()
        info = runs.get(run_id)
        pid = info.launch.get("pid")
        if pid and Path(f"/proc/{pid}/cmdline").exists():
            assert TOKEN not in Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
            seen_argv = True
        if info.state in ("completed", "failed"):
            break
        time.sleep(0.3)
    assert info.state == "completed", rundir.log_tail(workspace.run_path(run_id))
    assert seen_argv
    scanned = 0
    for path in studio_home.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), f"the token leaked into {path}"
            scanned += 1
    assert scanned > 5 and (info.path / "train.log").is_file()


def test_launching_needs_the_password_when_auth_is_on(tmp_path):
    app = AppServer(tmp_path, env={"STUDIO_AUTH": "ana:s3cret-pass"}).start()
    try:
        assert _get(f"{app.url}config") in (401, 403)
        assert _get(f"{app.url}gradio_api/info") in (401, 403)
        payload = b'{"data": [], "fn_index": 0, "session_hash": "x", "event_data": null, "trigger_id": 1}'
        status = _get(f"{app.url}gradio_api/queue/join", payload, {"Content-Type": "application/json"})
        assert status in (401, 403), status
        from gradio_client import Client

        with pytest.raises(Exception):  # noqa: B017 - any refusal will do, as long as nothing runs
            Client(app.url, verbose=False)
        assert not [d for d in (tmp_path / "runs").glob("*") if d.is_dir()], (
            "no run may start without the password"
        )
        Client(app.url, auth=("ana", "s3cret-pass"), verbose=False)  # the right password gets in
    finally:
        app.kill()
