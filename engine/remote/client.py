"""A worker's HTTP client for the dashboard's API (standard library only): JSON calls, file downloads
and uploads, each with the API token. Every refusal is a ``DashboardError`` carrying the dashboard's sentence."""
from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from engine.errors import UserError

TIMEOUT_S = 60.0  # one request; downloads and uploads stream, so this bounds a stall, not a transfer


class DashboardError(UserError):
    """The dashboard refused a request (``status`` is the HTTP status; 0 when it could not be reached)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Dashboard:
    """The dashboard at ``url`` (``http://host:8501``), called with ``token``.

    Args:
        url: the dashboard's address, as a browser would open it.
        token: the API token (the dashboard prints it at start-up and keeps it in ``<data home>/api_token``).
    """

    def __init__(self, url: str, token: str):
        parts = urllib.parse.urlsplit(url.strip().rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--server {url!r} is not a dashboard address: give one such as http://lab-pc:8501.")
        if not token or not token.strip():
            raise UserError("No API token: pass --token (or set ML_MANAGER_TOKEN) with the token the dashboard "
                            "printed at start-up (it is kept in its data home's api_token file).")
        self.url, self.token = parts.geturl(), token.strip()

    def _request(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None,
                 query: dict | None = None) -> urllib.request.Request:
        address = f"{self.url}/api/v1{path}"
        if query:
            address += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Authorization": f"Bearer {self.token}"}
        if content_type:
            headers["Content-Type"] = content_type
        return urllib.request.Request(address, data=data, method=method, headers=headers)

    def _open(self, request: urllib.request.Request):
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = f"the dashboard answered {exc.code} {exc.reason}"
            raise DashboardError(exc.code, message) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DashboardError(0, f"The dashboard at {self.url} cannot be reached ({reason}): check that it runs "
                                    "and serves this network (make run HOST=0.0.0.0).") from None

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> Any:
        """One JSON request; returns the decoded answer."""
        data = json.dumps(body).encode() if body is not None else None
        with self._open(self._request(method, path, data, "application/json" if data else None, query)) as response:
            return json.loads(response.read() or b"null")

    def download(self, path: str, dest: Path, query: dict | None = None) -> Path:
        """Stream a file to ``dest`` (written to a temp file beside it, then moved into place)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        try:
            with self._open(self._request("GET", path, query=query)) as response, open(tmp, "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def upload(self, path: str, source: Path, query: dict | None = None) -> Any:
        """PUT a file's bytes; returns the decoded answer."""
        request = self._request("PUT", path, source.read_bytes(), "application/octet-stream", query)
        with self._open(request) as response:
            return json.loads(response.read() or b"null")
