"""A stand-in Hugging Face Hub on 127.0.0.1: just the routes huggingface_hub 2.4 calls.

Push: whoami-v2, repos/create, validate-yaml, preupload (every file "regular", so contents travel
base64 inside the NDJSON commit and no LFS/Xet storage is needed) and commit.
Pull (tests/support/hubrepos.py describes the repos): /api/models and /api/datasets listings with
search/sort/limit, repo info with siblings and sizes (`blobs=True`) and safetensors counts, the
recursive tree, and /{repo}/resolve/{rev}/{file} (datasets under /datasets/) answering HEAD and GET
with ETag, X-Repo-Commit and Content-Length. Large ("LFS") files redirect with X-Linked-Size and
X-Linked-Etag to a second server on another port (a different origin, like the Hub's CDN), which
serves byte Ranges. Gated repos answer 401 (no token) or 403 (token without access) with
X-Error-Code GatedRepo; private ones 401 RepoNotFound. `throttle` slows file bodies; `cut()` drops
every transfer in flight, like a lost connection.

It checks the bearer token against a table (write / read-only / anything else is invalid), records
every request in `requests` and an access log file (method, path, status — never headers), and
every commit's files.

    with HubStub(tokens={"hf_good": "write"}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url

Run by hand (then `HF_ENDPOINT=<printed url> python app.py`):

    python -m tests.support.hubstub --tiny studio-test/tiny-chat --dataset studio-test/instructions --port 8765
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from tests.support.hubrepos import StubRepo

USER = "tester"
_REPO = r"/api/models/(?P<repo>[^/]+/[^/]+)"
_API_REPO = re.compile(
    r"/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
    r"(?:/revision/(?P<rev>[^/]+)|/tree/(?P<tree>[^/]+)(?:/(?P<sub>.*))?)?"
)
_RESOLVE = re.compile(r"/(?P<ds>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)")
_CDN = re.compile(r"/cdn/(?P<kind>model|dataset)/(?P<repo>[^/]+/[^/]+)/(?P<sha>[0-9a-f]{64})")
_CHUNK = 64 * 1024


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
    served: list[StubRepo] = field(default_factory=list)  # repos whose files are served
    port: int = 0  # 0: any free port; give the old one to "restart" the same Hub
    throttle: float | None = None  # bytes per second for file bodies (None: as fast as possible)
    body_bytes: dict[str, int] = field(default_factory=dict)  # file path -> body bytes sent
    ranges: list[tuple[str, str]] = field(default_factory=list)  # (file path, Range header) received
    cdn_auth: list[str] = field(default_factory=list)  # CDN paths that arrived WITH an Authorization header

    def __enter__(self) -> HubStub:
        stub = self
        self._cut = threading.Event()

        class Handler(_Handler):
            hub = stub

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn_url = f"http://127.0.0.1:{self._cdn.server_address[1]}"
        self._threads = [
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            for server in (self._server, self._cdn)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._cut.set()  # bodies in flight stop, like a server going away
        for server in (self._server, self._cdn):
            server.shutdown()
            server.server_close()

    def cut(self) -> None:
        """Drop every file transfer in flight and stop answering (a lost connection, a dead server)."""
        self.__exit__()

    def find(self, kind: str, repo_id: str) -> StubRepo | None:
        repo_type = "dataset" if kind.startswith("dataset") else "model"
        return next((r for r in self.served if r.repo_id == repo_id and r.repo_type == repo_type), None)

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

    def _reply(
        self, status: int, body: dict | list, error_code: str | None = None, headers: dict | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
        if isinstance(body, dict) and "error" in body:
            self.send_header("X-Error-Message", body["error"])
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
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
        self._read_route(head=False)

    def do_HEAD(self) -> None:
        self._read_route(head=True)

    # --- pull routes --------------------------------------------------------------------------
    def _read_route(self, head: bool) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if path in ("/api/models", "/api/datasets"):
            self._listing(path.rsplit("/", 1)[1], query)
        elif match := _API_REPO.fullmatch(path):
            self._api_repo(match, query)
        elif match := _RESOLVE.fullmatch(path):
            self._resolve(match, head)
        elif match := _CDN.fullmatch(path):
            self._cdn(match, head)
        else:
            self._reply(404, {"error": "Repository not found"}, "RepoNotFound")

    def _listing(self, kind: str, query: dict) -> None:
        search = (query.get("search") or [""])[0].lower()
        wanted = query.get("pipeline_tag", []) + query.get("filter", [])
        repos = [
            r
            for r in self.hub.served
            if r.repo_type == kind[:-1]
            and not r.private
            and search in r.repo_id.lower()
            and all(tag in (r.pipeline_tag, *r.summary()["tags"]) for tag in wanted)
        ]
        key = {"downloads": "downloads", "likes": "likes", "lastModified": "last_modified"}.get(
            (query.get("sort") or ["downloads"])[0], "downloads"
        )
        repos.sort(key=lambda r: getattr(r, key), reverse=True)
        limit = int((query.get("limit") or ["1000"])[0])
        self._reply(200, [r.summary() for r in repos[:limit]])

    def _api_repo(self, match: re.Match, query: dict) -> None:
        repo = self._repo_or_reply(match["kind"], match["repo"], for_files=False)
        if repo is None or not self._revision_ok(repo, match["rev"] or match["tree"] or "main"):
            return
        if match["tree"] is None:
            self._reply(
                200,
                repo.info(with_sizes=(query.get("blobs") or [""])[0].lower() == "true" or "expand" in query),
            )
            return
        prefix = (match["sub"] or "").strip("/")
        paths = [p for p in sorted(repo.files) if not prefix or p.startswith(prefix + "/")]
        self._reply(200, [repo.tree_entry(p) for p in paths])

    def _repo_or_reply(self, kind: str, repo_id: str, for_files: bool) -> StubRepo | None:
        """The repo if this request may see it; otherwise reply the Hub's error and return None."""
        repo = self.hub.find(kind, repo_id)
        token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        known = token in self.hub.tokens
        if repo is None or (repo.private and not known):
            status = 401 if not known else 404
            self._reply(status, {"error": "Repository not found"}, "RepoNotFound")
            return None
        if for_files and repo.gated and token not in repo.granted:
            if not known:
                message = (
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in."
                )
                self._reply(401, {"error": message}, "GatedRepo")
            else:
                message = (
                    f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                    f"Visit {self._base()}/{repo_id} to ask for access."
                )
                self._reply(403, {"error": message}, "GatedRepo")
            return None
        return repo

    def _revision_ok(self, repo: StubRepo, revision: str) -> bool:
        if revision in ("main", repo.sha):
            return True
        self._reply(404, {"error": f"Invalid rev id: {revision}"}, "RevisionNotFound")
        return False

    def _resolve(self, match: re.Match, head: bool) -> None:
        kind = "datasets" if match["ds"] else "models"
        repo = self._repo_or_reply(kind, match["repo"], for_files=True)
        if repo is None or not self._revision_ok(repo, match["rev"]):
            return
        name = match["file"]
        if name not in repo.files:
            self._reply(
                404, {"error": f"{name} does not exist"}, "EntryNotFound", {"X-Repo-Commit": repo.sha}
            )
            return
        common = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if repo.is_lfs(name):
            # Like the Hub: large files live on a CDN of another origin; the metadata rides on the redirect.
            location = f"{self.hub.cdn_url}/cdn/{repo.repo_type}/{repo.repo_id}/{repo.sha256(name)}"
            headers = common | {
                "Location": location,
                "X-Linked-Size": str(repo.size(name)),
                "X-Linked-Etag": f'"{repo.sha256(name)}"',
                "ETag": f'"{repo.blob_id(name)}"',
            }
            self._empty(302, headers)
            return
        self._send_file(repo, name, head, common | {"ETag": f'"{repo.blob_id(name)}"'})

    def _cdn(self, match: re.Match, head: bool) -> None:
        if self.headers.get("Authorization"):
            self.hub.cdn_auth.append(self.path)
        repo = self.hub.find(match["kind"], match["repo"])
        name = next(
            (p for p in (repo.files if repo else {}) if repo.is_lfs(p) and repo.sha256(p) == match["sha"]),
            None,
        )
        if name is None:
            self._reply(404, {"error": "no such object"})
            return
        self._send_file(repo, name, head, {"ETag": f'"{match["sha"]}"', "Accept-Ranges": "bytes"})

    def _send_file(self, repo: StubRepo, name: str, head: bool, headers: dict) -> None:
        size = repo.size(name)
        start, status = 0, 200
        if range_header := self.headers.get("Range"):
            self.hub.ranges.append((name, range_header))
            start = int(re.match(r"bytes=(\d+)-", range_header).group(1))
            if start >= size:
                self._empty(416, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers = headers | {"Content-Range": f"bytes {start}-{size - 1}/{size}"}
        self.send_response(status)
        for key, value in (headers | {"Content-Length": str(size - start)}).items():
            self.send_header(key, value)
        self.end_headers()
        self.hub.log(self.command, self.path, status)
        if not head:
            self._stream(repo.files[name], name, start)

    def _stream(self, local: Path, name: str, start: int) -> None:
        with open(local, "rb") as fh:
            fh.seek(start)
            while chunk := fh.read(_CHUNK):
                if self.hub._cut.is_set():
                    self.close_connection = True
                    self.connection.close()  # mid-body: the client sees a broken transfer
                    return
                self.wfile.write(chunk)
                self.hub.body_bytes[name] = self.hub.body_bytes.get(name, 0) + len(chunk)
                if self.hub.throttle:
                    time.sleep(len(chunk) / self.hub.throttle)

    def _empty(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for key, value in (headers | {"Content-Length": "0"}).items():
            self.send_header(key, value)
        self.end_headers()
        self.hub.log(self.command, self.path, status)

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


def main(argv: list[str] | None = None) -> None:
    """Serve models and a dataset on a port until Ctrl-C, for trying the app by hand."""
    import argparse
    import tempfile

    from tests.support.hubrepos import model_repo, sample_dataset_repo

    parser = argparse.ArgumentParser(prog="python -m tests.support.hubstub", description=main.__doc__)
    parser.add_argument("--models", nargs="*", default=[], metavar="ID=FOLDER", help="saved model folders")
    parser.add_argument("--tiny", metavar="ID", help="also build and serve the tiny random test model")
    parser.add_argument("--default", metavar="ID", help="also serve the embedded default model (safetensors)")
    parser.add_argument("--dataset", metavar="ID", help="also serve a parquet dataset made from sample_data/")
    parser.add_argument(
        "--gated", nargs="*", default=[], metavar="ID", help="repos that need a granted token"
    )
    parser.add_argument(
        "--token", nargs="*", default=[], metavar="TOKEN", help="tokens that may read gated repos"
    )
    parser.add_argument("--throttle", type=float, default=None, help="bytes per second for file bodies")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="hubstub-"))
    served = [model_repo(*item.split("=", 1)) for item in args.models]
    if args.tiny:
        from tests.support.tinymodel import build_tiny_model

        served.append(model_repo(args.tiny, build_tiny_model(scratch / "tiny")))
    if args.default:
        from studio import models

        served.append(model_repo(args.default, models.default_model_dir(), downloads=1000))
    if args.dataset:
        served.append(sample_dataset_repo(args.dataset, scratch / "dataset"))
    tokens = {token: "read" for token in args.token}
    for repo in served:
        repo.gated = repo.repo_id in args.gated
        repo.granted = set(tokens)
    with HubStub(tokens=tokens, served=served, port=args.port, throttle=args.throttle) as hub:
        for repo in served:
            print(f"{repo.repo_type} {repo.repo_id}{' (gated)' if repo.gated else ''}")
        print(f"Serving on {hub.url}: run the app with HF_ENDPOINT={hub.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
