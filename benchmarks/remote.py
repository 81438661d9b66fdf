"""Several machines, measured: the same short training on a worker on the dashboard's machine (it writes the
registry itself) and on a remote worker (everything over the HTTP API, its own data home), the download of
the DRIVE data set by a remote worker, and the latency of the status route while a run reports.

    .venv/bin/python benchmarks/remote.py [--epochs 3] [--polls 60]

It starts a real Redis server, the dashboard as `make run` starts it (with ML_MANAGER_QUEUE) and the workers,
all on this machine, so the network is the loopback: the ratio shows what the HTTP reporting costs, not a LAN.
DRIVE is read from ../shared/data/drive/training; without it the synthetic set stands in (and is said so).
"""
from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where benchmarks/queue.py would stand in for the
# standard library's queue module (which redis imports): take that folder off the path first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402 - after the sys.path fix above
import http.client  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.remote_helpers import Dashboard, RedisServer, RemoteWorker, wait_for  # noqa: E402

DRIVE = ROOT.parent / "shared" / "data" / "drive" / "training"
CONFIG = {"base_channels": 8, "depth": 3, "patch_size": 64, "batch_size": 4, "steps_per_epoch": 20,
          "num_threads": 1, "val_fraction": 0.2, "early_stopping_patience": 0, "calibrate_postprocess": False,
          "precision": "fp32", "device": "cpu"}


class LocalWorker:
    """`python -m engine worker` on the dashboard's own data home (the Redis queue, no --server)."""

    def __init__(self, home: Path, queue_url: str, queues: str):
        env = {**os.environ, "ML_MANAGER_HOME": str(home), "ML_MANAGER_QUEUE": queue_url,
               "ML_MANAGER_QUEUES": "local,remote,bench", "OMP_NUM_THREADS": "1"}
        log = open(home / "logs" / "local-worker.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--queues", queues], cwd=ROOT,
                                     env=env, stdout=log, stderr=log)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)


def timed_run(dashboard: Dashboard, queue: str, dataset: str, epochs: int, polls: int) -> dict:
    body = {"name": f"bench-{queue}", "dataset": dataset, "training_config": {**CONFIG, "epochs": epochs},
            "plan": False, "queue": queue}
    status, answer = dashboard.call("POST", "/api/v1/training/start", body)
    assert status == 202, answer
    model_id, started = answer["model_id"], time.monotonic()
    wait_for(lambda: dashboard.status(model_id)["status"] == "running", 300, 0.05, "the run to start")
    latencies = []
    for _ in range(polls):  # while it trains and reports
        t0 = time.perf_counter()
        dashboard.status(model_id)
        latencies.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.05)
    final = wait_for(lambda: (s := dashboard.status(model_id))["status"] in ("completed", "failed") and s, 1800, 0.2,
                     "the run to end")
    assert final["status"] == "completed", final
    history = dashboard.call("GET", f"/api/v1/training/status/{model_id}?history=1")[1]["history"]
    return {"wall": time.monotonic() - started, "per_epoch": statistics.median(h["seconds"] for h in history),
            "latency_median": statistics.median(latencies), "latency_p95": sorted(latencies)[int(0.95 * len(latencies))]}


def download_time(dashboard: Dashboard, dataset: str) -> tuple[float, float, float, int]:
    """(the claim, which hashes and zips the data set the first time; the download; a second download;
    the zip's bytes), as a worker fetches it."""
    body = {"name": "bench-download", "dataset": dataset, "training_config": CONFIG, "plan": False, "queue": "bench"}
    model_id = dashboard.call("POST", "/api/v1/training/start", body)[1]["model_id"]
    worker = "bench-host:1:abcdef"
    t0 = time.perf_counter()
    claim = dashboard.call("POST", f"/api/v1/workers/trainings/{model_id}/claim", {"worker_id": worker})[1]
    times = [time.perf_counter() - t0]
    for _ in range(2):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=300)
        conn.request("GET", f"/api/v1/workers/trainings/{model_id}/dataset?worker_id={worker}",
                     headers={"Authorization": f"Bearer {dashboard.token}"})
        size = len(conn.getresponse().read())
        conn.close()
        times.append(time.perf_counter() - t0)
    dashboard.call("POST", f"/api/v1/workers/trainings/{model_id}/finish", {"worker_id": worker, "error": "benchmark"})
    assert size == claim["dataset"]["bytes"]
    return times[0], times[1], times[2], size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--polls", type=int, default=60, help="status requests timed during each run")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ml-manager-remote-bench-"))
    home = base / "A"
    (home / "logs").mkdir(parents=True)
    if (DRIVE / "images").is_dir():
        dataset, what = str(DRIVE), "DRIVE training (20 images)"
        extra = {"ML_MANAGER_API_FOLDERS": str(DRIVE.parent)}
    else:
        from engine.training.synthetic import make_synthetic_dataset

        make_synthetic_dataset(home / "datasets" / "synth", n_images=20, size=256, seed=0)
        dataset, what, extra = "datasets/synth", "synthetic stand-in (DRIVE not found)", {}
    redis = RedisServer(base / "redis").start()
    dashboard = Dashboard(home, {"ML_MANAGER_QUEUE": redis.url, "ML_MANAGER_QUEUES": "local,remote,bench", **extra})
    local = remote = None
    try:
        local = LocalWorker(home, redis.url, "local")
        remote = RemoteWorker(base / "B", dashboard, "remote").start()
        wait_for(lambda: sum(w["alive"] for w in dashboard.call("GET", "/api/v1/workers")[1]["workers"]) >= 2, 90,
                 0.2, "both workers")
        claim, first, again, size = download_time(dashboard, dataset)
        runs = {name: timed_run(dashboard, name, dataset, args.epochs, args.polls) for name in ("local", "remote")}
    finally:
        for worker in (local, remote):
            if worker is not None:
                worker.stop()
        dashboard.stop()
        redis.stop()
        shutil.rmtree(base, ignore_errors=True)
    lo, re_ = runs["local"], runs["remote"]
    print(f"Several machines on one ({what}; {args.epochs} epochs of {CONFIG['steps_per_epoch']} steps, batch "
          f"{CONFIG['batch_size']}, {CONFIG['patch_size']} px patches, fp32, 1 thread; Redis, dashboard and workers "
          f"on this machine)\n")
    print(f"| {'measure':<42} | {'local worker':>12} | {'remote worker':>13} | {'remote / local':>14} |")
    print(f"|{'-' * 44}|{'-' * 13}:|{'-' * 14}:|{'-' * 15}:|")
    for label, key, unit in (("seconds per epoch (median)", "per_epoch", "s"),
                             ("queued to completed", "wall", "s"),
                             ("GET training/status while it runs, median", "latency_median", "ms"),
                             ("GET training/status while it runs, p95", "latency_p95", "ms")):
        print(f"| {label:<42} | {lo[key]:>9.3g} {unit:<2} | {re_[key]:>10.3g} {unit:<2} | "
              f"{re_[key] / lo[key]:>13.2f}x |")
    print(f"\nThe data set for a remote worker ({size / 1e6:.1f} MB zip): the claim that hashes and zips it "
          f"(once per content) {claim:.2f} s, its download {first:.2f} s (again: {again:.2f} s); a worker keeps it "
          "by content hash, so its next run on it downloads nothing.")


if __name__ == "__main__":
    main()
