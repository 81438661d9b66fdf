"""What the HTTP API costs: status requests over HTTP against calling ``engine.jobs.training_status`` directly.

    .venv/bin/python benchmarks/api.py [--requests 500] [--size 128]

Starts, on a temporary data home, a real worker (``huey_consumer engine.jobs.huey -k thread -w 2``) and
the dashboard with its API the way ``make run`` does (``streamlit run server.py`` on a free port), queues
a small synthetic training that runs until stopped, and while it trains measures, one request at a time:

* direct: ``training_status(model_id)`` called in this process (opens the registry, reads the row);
* HTTP, keep-alive: ``GET /api/v1/training/status/{id}`` on one persistent connection;
* HTTP, new connection: the same with a new TCP connection per request (what ``curl`` does).

Prints requests per second and p50 / p99 latency for each, and each HTTP row's ratio to direct.
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Python puts this script's folder first on sys.path, where benchmarks/queue.py would shadow the standard
# library's ``queue`` (torch imports it): drop that entry.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import jobs  # noqa: E402 - after the sys.path line above
from engine.training.synthetic import make_synthetic_dataset  # noqa: E402
from storage import db as store  # noqa: E402
from tests.browser_helpers import free_port  # noqa: E402
from tests.worker_helpers import Worker, wait_for  # noqa: E402

TRAINING = {"base_channels": 8, "depth": 3, "patch_size": 64, "batch_size": 4, "steps_per_epoch": 20,
            "epochs": 10_000, "num_threads": 1, "early_stopping_patience": 0, "calibrate_postprocess": False}


def start_server(home: Path) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    env = {**os.environ, "ML_MANAGER_HOME": str(home), "OMP_NUM_THREADS": "1"}
    log = open(home / "logs" / "server.log", "ab")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("streamlit")), "run", "server.py",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true"], cwd=ROOT, env=env, stdout=log, stderr=log)
    token = wait_for(lambda: (home / "api_token").exists() and (home / "api_token").read_text().strip(), 60, 0.1,
                     "the API token")

    def up() -> bool:
        try:
            return request(http.client.HTTPConnection("127.0.0.1", port, timeout=5), "/api/v1/health", token) == 200
        except OSError:
            return False

    wait_for(up, 90, 0.2, "the API")
    return proc, port, token


def request(conn: http.client.HTTPConnection, path: str, token: str) -> int:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    response.read()
    return response.status


def timed(call, n: int) -> list[float]:
    """Seconds per call, ``n`` calls one after another (after 20 warm-up calls)."""
    for _ in range(20):
        call()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def row(name: str, times: list[float], direct: list[float] | None) -> str:
    qs = len(times) / sum(times)
    p50, p99 = statistics.median(times) * 1e3, statistics.quantiles(times, n=100)[98] * 1e3
    ratio = "" if direct is None else (f"{qs / (len(direct) / sum(direct)):>8.2f} {p50 / (statistics.median(direct) * 1e3):>8.2f}"
                                       f" {p99 / (statistics.quantiles(direct, n=100)[98] * 1e3):>8.2f}")
    return f"{name:<26} {qs:>9.0f} {p50:>8.2f} {p99:>8.2f}  {ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="status requests per row")
    parser.add_argument("--size", type=int, default=128, help="synthetic image size of the training")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        (home / "logs").mkdir(parents=True)
        os.environ["ML_MANAGER_HOME"] = str(home)
        data = make_synthetic_dataset(home / "datasets" / "synth", n_images=8, size=args.size, seed=0)
        with Worker(home):
            proc, port, token = start_server(home)
            try:
                model_id = jobs.submit_training("api-benchmark", data, TRAINING)
                wait_for(lambda: (store.get_model(model_id)["batch"] or 0) > 0, 120, 0.1, "the training's first batch")
                path = f"/api/v1/training/status/{model_id}"
                direct = timed(lambda: jobs.training_status(model_id), args.requests)
                keep = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                kept = timed(lambda: request(keep, path, token), args.requests)
                keep.close()
                fresh = timed(lambda: request(http.client.HTTPConnection("127.0.0.1", port, timeout=10), path, token),
                              args.requests)
                still = store.get_model(model_id)["status"]
                jobs.stop_training(model_id)
                wait_for(lambda: store.get_model(model_id)["status"] not in ("running", "stopping"), 60, 0.2,
                         "the training to stop")
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    print(f"training_status while a training runs ({still} throughout), {args.requests} requests per row, "
          f"one at a time")
    print(f"{'':<26} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  {'req/s x':>8} {'p50 x':>8} {'p99 x':>8}")
    print(row("direct (Python)", direct, None))
    print(row("HTTP, keep-alive", kept, direct))
    print(row("HTTP, new connection", fresh, direct))


if __name__ == "__main__":
    main()
