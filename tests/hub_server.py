"""A Hugging Face Hub (and a public bucket) on 127.0.0.1, for the real clients.

Implements the routes the installed `huggingface_hub` calls to download a
repo: model info (`/api/models/REPO/revision/REV`), the recursive file listing
(`/api/models/REPO/tree/REV`), and file resolve (`HEAD` / `GET
/REPO/resolve/REV/PATH` with `X-Repo-Commit`, `ETag`, `Content-Length` and
byte ranges), with the Hub's error codes (`X-Error-Code: RepoNotFound`,
`EntryNotFound`, `GatedRepo`). Files under `/gcs/BUCKET/PATH` stand for a
public Cloud Storage bucket (byte ranges too). Every request is logged, and a
file's first download can be cut after some bytes (a dropped connection).

    with LoopbackHub() as hub:
        hub.add_repo("google/tiny", folder)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
"""

import hashlib
import http.server
import json
import os
import re
import threading
import urllib.parse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class LoopbackHub:
    def __init__(self):
        self.repos = {}  # repo id -> {"files": {path: bytes}, "gated": bool}
        self.bucket = {}  # "bucket/path" -> bytes
        self.requests = []  # (method, path, Range header)
        self.cuts = {}  # path -> bytes sent before the connection drops (once)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, repo_id, folder, gated=False):
        files = {}
        for root, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    files[os.path.relpath(path, folder).replace(os.sep, "/")] = f.read()
        self.repos[repo_id] = {"files": files, "gated": gated}

    def add_bucket_file(self, path, source):
        with open(source, "rb") as f:
            self.bucket[path] = f.read()

    def cut(self, path, after):
        """The next GET of a URL path ending in `path` sends `after` bytes, then drops."""
        self.cuts[path] = after

    def weight_requests(self):
        """GET requests that transferred weights."""
        return [r for r in self.requests if r[0] == "GET" and r[1].endswith((".safetensors", ".npz"))]


def _handler(hub):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body):
            path = urllib.parse.urlsplit(self.path).path
            hub.requests.append((self.command, path, self.headers.get("Range")))
            if path.startswith("/gcs/"):
                data = hub.bucket.get(path[len("/gcs/"):])
                if data is None:
                    return self._error(404, "NoSuchKey")
                return self._file(path, data, body, {})
            match = re.fullmatch(r"/api/models/(.+?)/(revision|tree)/([^/]+)", path)
            if match:
                return self._api(*match.groups())
            match = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
            if match:
                repo_id, _, file = match.groups()
                repo = self._repo(repo_id)
                if repo is None:
                    return
                data = repo["files"].get(urllib.parse.unquote(file))
                if data is None:
                    return self._error(404, "Entry not found", code="EntryNotFound")
                digest = hashlib.sha256(data).hexdigest()
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{digest}"'}
                return self._file(path, data, body, headers)
            self._error(404, "Not found")

        def _repo(self, repo_id):
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "Repository not found", code="RepoNotFound")
            elif repo["gated"] and "authorization" not in {k.lower() for k in self.headers}:
                self._error(401, f"Access to model {repo_id} is restricted.", code="GatedRepo")
                return None
            return repo

        def _api(self, repo_id, kind, revision):
            repo = self._repo(repo_id)
            if repo is None:
                return
            if kind == "revision":
                payload = {"id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": False,
                           "gated": "manual" if repo["gated"] else False,
                           "siblings": [{"rfilename": name} for name in sorted(repo["files"])]}
            else:
                payload = []
                for name, data in sorted(repo["files"].items()):
                    entry = {"type": "file", "path": name, "size": len(data),
                             "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
                    if name.endswith(".safetensors"):
                        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                        "pointerSize": 134}
                    payload.append(entry)
            self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

        def _file(self, path, data, body, headers):
            start, status = 0, 200
            requested = self.headers.get("Range")
            if requested:
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", requested.strip())
                start = int(match.group(1))
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            chunk = data[start:]
            headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **headers}
            if not body:
                return self._send(status, b"", {**headers, "Content-Length": str(len(chunk))}, head=True)
            cut = next((key for key in hub.cuts if path.endswith(key)), None)
            if cut is not None:
                after = hub.cuts.pop(cut)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(chunk))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(chunk[:after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self._send(status, chunk, headers)

        def _error(self, status, message, code=None):
            headers = {"X-Error-Message": message, "Content-Type": "application/json"}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers)

        def _send(self, status, payload, headers, head=False):
            self.send_response(status)
            if "Content-Length" not in headers:
                headers = {**headers, "Content-Length": str(len(payload))}
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if not head and self.command != "HEAD":
                self.wfile.write(payload)

    return Handler
