"""A small real Kubernetes API server for tests: the batch/v1 Job endpoints the client uses.

It speaks HTTP on 127.0.0.1 (port 0) and keeps Jobs in memory: create, read
(and read status), list by label selector, delete. Nothing runs the Jobs; a
test moves a Job's status with `set_status`. Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from kubernetes import client

_JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs$")
_JOB = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+?)(/status)?$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict
    body: dict | None


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


class FakeKubernetes:
    """The API server; `api_client()` is a kubernetes client aimed at it."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _answer(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                with fake.lock:
                    fake.requests.append(Request(method, url.path, query, body))
                    self._answer(*fake.route(method, url.path, query, body))

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def route(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        if match := _JOBS.match(path):
            namespace = match.group(1)
            if method == "POST":
                return self._create(namespace, body or {})
            if method == "GET":
                wanted = dict(
                    p.split("=", 1) for p in query.get("labelSelector", "").split(",") if p
                )
                items = [
                    job
                    for (ns, _), job in sorted(self.jobs.items())
                    if ns == namespace
                    and all(
                        job["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items()
                    )
                ]
                return 200, {
                    "kind": "JobList",
                    "apiVersion": "batch/v1",
                    "metadata": {},
                    "items": items,
                }
        elif match := _JOB.match(path):
            key = (match.group(1), match.group(2))
            if key not in self.jobs:
                return 404, _status(404, "NotFound", f'jobs.batch "{key[1]}" not found')
            if method == "GET":
                return 200, self.jobs[key]
            if method == "DELETE":
                job = self.jobs.pop(key)
                return 200, {
                    **_status(200, "", ""),
                    "status": "Success",
                    "details": {"name": job["metadata"]["name"]},
                }
        return 405, _status(405, "MethodNotAllowed", f"{method} {path}")

    def _create(self, namespace: str, job: dict) -> tuple[int, dict]:
        name = job.get("metadata", {}).get("name", "")
        if job.get("kind") != "Job" or not _NAME.match(name):
            return 422, _status(422, "Invalid", f"invalid Job name {name!r}")
        if job["metadata"].get("namespace", namespace) != namespace:
            return 400, _status(400, "BadRequest", "the namespace of the object does not match")
        if (namespace, name) in self.jobs:
            return 409, _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
        stored = json.loads(json.dumps(job))
        stored["metadata"].update(
            namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp="2025-01-01T00:00:00Z"
        )
        stored["status"] = {"active": 1}
        self.jobs[(namespace, name)] = stored
        return 201, stored

    def set_status(self, namespace: str, name: str, status: dict) -> None:
        """Moves a Job along, as the Job controller would."""
        with self.lock:
            self.jobs[(namespace, name)]["status"] = status

    def delete(self, namespace: str, name: str) -> None:
        """Deletes a Job behind the trainer's back (kubectl delete, TTL, ...)."""
        with self.lock:
            self.jobs.pop((namespace, name))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
