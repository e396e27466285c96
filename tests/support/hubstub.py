"""A stand-in Hugging Face Hub on 127.0.0.1 for push tests: just what huggingface_hub 2.4 calls.

Serves whoami-v2, repos/create, validate-yaml, preupload (every file "regular", so contents travel
base64 inside the NDJSON commit and no LFS/Xet storage is needed) and commit. It checks the bearer
token against a table (write / read-only / anything else is invalid), records every request in
`requests` and an access log file (method, path, status — never headers), and every commit's files.

    with HubStub(tokens={"hf_good": "write"}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

USER = "tester"
_REPO = r"/api/models/(?P<repo>[^/]+/[^/]+)"


@dataclass
class Commit:
    repo_id: str
    summary: str
    files: dict[str, bytes]
    oid: str


@dataclass
class HubStub:
    tokens: dict[str, str] = field(default_factory=dict)  # token -> "write" | "read"
    log_path: Path | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)
    repos: dict[str, dict] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)

    def __enter__(self) -> HubStub:
        stub = self

        class Handler(_Handler):
            hub = stub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def log(self, method: str, path: str, status: int) -> None:
        self.requests.append((method, path))
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(f"{method} {path} {status}\n")


class _Handler(BaseHTTPRequestHandler):
    hub: HubStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # silence stderr; HubStub.log keeps the record
        pass

    def _reply(self, status: int, body: dict, error_code: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
        if "error" in body:
            self.send_header("X-Error-Message", body["error"])
        self.end_headers()
        self.wfile.write(data)
        self.hub.log(self.command, self.path, status)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _role(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return (
            self.hub.tokens.get(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None
        )

    def _authorized(self, need_write: bool) -> bool:
        role = self._role()
        if role is None:
            self._reply(401, {"error": "Invalid credentials in Authorization header"})
            return False
        if need_write and role != "write":
            self._reply(403, {"error": "You don't have the rights to write with this token"})
            return False
        return True

    def do_GET(self) -> None:
        if self.path.startswith("/api/whoami-v2"):
            if self._authorized(need_write=False):
                access = {"displayName": "studio-test", "role": self._role()}
                self._reply(200, {"type": "user", "name": USER, "orgs": [], "auth": {"accessToken": access}})
            return
        self._reply(404, {"error": "Repository not found"}, "RepoNotFound")

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/api/validate-yaml":
            self._validate_yaml(body)
        elif self.path == "/api/repos/create":
            self._create_repo(body)
        elif match := re.fullmatch(_REPO + r"/preupload/[^/?]+", self.path):
            self._preupload(match["repo"], body)
        elif match := re.fullmatch(_REPO + r"/commit/[^/?]+", self.path):
            self._commit(match["repo"], body)
        else:
            self._reply(404, {"error": f"no route {self.path}"})

    def _validate_yaml(self, body: bytes) -> None:
        content = json.loads(body)["content"]
        parts = content.split("---", 2)
        try:
            yaml.safe_load(parts[1] if content.startswith("---") and len(parts) == 3 else "")
        except yaml.YAMLError as exc:
            self._reply(400, {"errors": [{"message": str(exc)}]})
            return
        self._reply(200, {"warnings": []})

    def _create_repo(self, body: bytes) -> None:
        if not self._authorized(need_write=True):
            return
        payload = json.loads(body)
        namespace = payload.get("organization") or USER
        repo_id = f"{namespace}/{payload['name']}"
        if namespace != USER:
            self._reply(403, {"error": f"You don't have the rights to create a model under {namespace}"})
        elif repo_id in self.hub.repos:
            self._reply(
                409, {"error": "You already created this model repo", "url": f"{self._base()}/{repo_id}"}
            )
        else:
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.hub.repos[repo_id] = {"private": private}
            self._reply(200, {"url": f"{self._base()}/{repo_id}", "name": repo_id})

    def _preupload(self, repo_id: str, body: bytes) -> None:
        if not self._authorized(need_write=True):
            return
        if repo_id not in self.hub.repos:
            self._reply(404, {"error": "Repository not found"}, "RepoNotFound")
            return
        files = json.loads(body)["files"]
        modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
        self._reply(200, {"files": modes, "commitOid": "0" * 40})

    def _commit(self, repo_id: str, body: bytes) -> None:
        if not self._authorized(need_write=True):
            return
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        files = {}
        for item in lines:
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] != "header":
                self._reply(422, {"error": f"the stub accepts only inline files, got {item['key']}"})
                return
        oid = hashlib.sha1(body).hexdigest()
        self.hub.commits.append(Commit(repo_id, header["summary"], files, oid))
        url = f"{self._base()}/{repo_id}/commit/{oid}"
        self._reply(200, {"commitOid": oid, "commitUrl": url, "success": True, "pullRequestUrl": None})

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"
