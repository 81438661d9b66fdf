"""Every ```bash block of the README runs as written, on a fresh data home: ports, folders and the words in
capitals (DIR, MODEL_ID, TOKEN, …) are filled in, nothing else changes. One file runs each block, so the blocks
run side by side in `make test`'s processes: tests/test_readme_commands.py (the first block, and the list of
blocks), tests/test_readme_command_line.py, tests/test_readme_http_api.py, tests/test_readme_several_machines.py.

Commands that keep running (`make run`, `make test`, `redis-server`, a worker, a training) are started, checked
to answer (the API's health, Redis' PING, the worker in the dashboard's list, a finished epoch, the first test
process), and stopped with Ctrl-C: a service at the end of its block, the test suite at once, a training once a
later line reads its --out folder or the block ends (it trains on while the lines after it run).
Lines that need ../shared/data are skipped, with the reason, on a clone without it.
"""
from __future__ import annotations

import contextlib
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

from tests.remote_helpers import free_port, redis_server_binary, wait_for

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
FOREGROUND = {"make test"}  # stopped as soon as it answers; a training once read from, the others at the block's end
ANSWER_S = 300  # how long a command that keeps running may take to answer
EPOCH_S = 780  # how long a training may take to end its first epoch (it shares the CPU with the lines after it)


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
    trainings: list = field(default_factory=list)  # (its --out folder, Popen, log, start time): not yet answered

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
        self.settle(filled)
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
        if kind == "train":  # it trains on while the next lines run
            out = re.search(r"--out (\S+)", command)
            self.trainings.append((out.group(1) if out else "", proc, log, time.monotonic()))
            return
        wait_for(lambda: self._answers(kind, proc, log), ANSWER_S, 0.5, f"{command[:80]} to answer")
        if kind in FOREGROUND:
            self.stop(proc)

    def settle(self, command: str | None = None) -> None:
        """Each training whose --out folder ``command`` reads (every one if None) ends its first epoch and stops."""
        for training in list(self.trainings):
            out, proc, log, started = training
            if command is None or re.search(rf"{re.escape(out)}(?=/|\s|$)", command):
                self.trainings.remove(training)
                wait_for(lambda: self._answers("train", proc, log), max(1, round(started + EPOCH_S - time.monotonic())),
                         0.5, f"{out}'s training to end its first epoch (within {EPOCH_S} s of its start)")
                self.stop(proc)

    def run_block(self, commands: list[str]) -> None:
        """Runs the commands in order, then checks the trainings still running (their first epoch) and stops them."""
        for command in commands:
            self.run(command)
        self.settle()

    def _answers(self, kind: str, proc: subprocess.Popen, log: Path) -> bool:
        text = log.read_text(errors="replace")
        if kind == "train" and re.search(r"^\r?epoch \d+", text, re.MULTILINE):
            return True  # a training: its first epoch ended
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
        return False  # a training whose first epoch has not ended

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


@contextlib.contextmanager
def new_shell(tmp_path: Path):
    """A Shell on a fresh data home and user home in ``tmp_path``, on free ports; its services stop on exit."""
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
    try:
        yield made
    finally:
        made.stop_all()


BLOCKS = shell_blocks()


def block(heading: str) -> list[str]:
    return next(commands for h, commands in BLOCKS if h == heading)


def cmdline_has(proc: Path, token: str) -> bool:
    try:
        return token in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


