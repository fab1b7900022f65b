"""A read-only Hugging Face Hub on 127.0.0.1 that serves local folders as model repos.

Point ``HF_ENDPOINT`` at :attr:`LoopbackHub.endpoint` and ``huggingface_hub`` / diffusers run their
real repo-id code paths (``model_info``, ``hf_hub_download``, ``snapshot_download``, the HF cache
layout) against it, with no network. It implements only what those calls read: repo info with
``sha`` and ``siblings``, the recursive tree listing, and ``resolve`` for HEAD/GET of a file.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Repo:
    def __init__(self, repo_id: str, folder: Path):
        self.repo_id = repo_id
        self.files = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
        }
        digest = hashlib.sha1()
        for path, data in self.files.items():
            digest.update(path.encode() + b"\0" + data)
        self.sha = digest.hexdigest()

    def info(self) -> dict:
        return {
            "_id": self.sha[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "sha": self.sha,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["diffusers"],
            "library_name": "diffusers",
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": path} for path in self.files],
        }

    def tree(self, prefix: str) -> list[dict]:
        return [
            {"type": "file", "oid": _git_blob_sha(data), "size": len(data), "path": path}
            for path, data in self.files.items()
            if not prefix or path.startswith(prefix.rstrip("/") + "/")
        ]


class LoopbackHub:
    """Serve ``{repo_id: folder}`` as Hub model repos until :meth:`close`; records every request."""

    def __init__(self, repos: dict[str, str | Path]):
        self.repos = {repo_id: _Repo(repo_id, Path(folder)) for repo_id, folder in repos.items()}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_HEAD(self):
                hub._handle(self, with_body=False)

            def do_GET(self):
                hub._handle(self, with_body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _handle(self, request: BaseHTTPRequestHandler, with_body: bool) -> None:
        path = unquote(urlparse(request.path).path)
        self.requests.append(f"{request.command} {path}")
        parts = path.strip("/").split("/")
        body, headers, status = b"", {}, 404
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = self.repos.get("/".join(parts[2:4]))
            rest = parts[4:]
            if repo is not None and (not rest or rest[0] == "revision"):
                status, body = 200, json.dumps(repo.info()).encode()
            elif repo is not None and rest[0] == "tree":
                status, body = 200, json.dumps(repo.tree("/".join(rest[2:]))).encode()
            headers["Content-Type"] = "application/json"
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo = self.repos.get("/".join(parts[:2]))
            filename = "/".join(parts[4:])
            if repo is not None and filename in repo.files:
                status, body = 200, repo.files[filename]
                headers["ETag"] = f'"{_git_blob_sha(body)}"'
                headers["X-Repo-Commit"] = repo.sha
            elif repo is not None:
                headers["X-Error-Code"] = "EntryNotFound"
                headers["X-Repo-Commit"] = repo.sha
        if status == 404 and "X-Error-Code" not in headers:
            headers["X-Error-Code"] = "RepoNotFound"
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if with_body:
            request.wfile.write(body)
