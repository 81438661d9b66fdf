"""How much the queue costs: start and stop latency, and training throughput through the worker vs direct.

    .venv/bin/python benchmarks/queue.py [--repeats 2] [--epochs 3] [--steps 20] [--max-delay 0.5]

Runs a real ``huey_consumer engine.jobs.huey -k thread -w 2`` on a temporary data home with a synthetic
data set and prints one table:

* start → first batch: from ``start_training`` returning to the first batch recorded in the registry
  (cold = the worker's first training, which includes importing torch; warm = a later one);
* stop → end: from ``stop_training`` to the run's row leaving ``running``/``stopping``;
* throughput: training patches per second (per-epoch wall time, validation included) through the queue
  vs calling ``engine.training.loop.train`` in this process with the same config; target ratio ≥ 0.95. On a
  busy shared machine this ratio swings ±20 % from run to run, so the table also gives
* queue bookkeeping: what the worker adds to the training thread, measured call by call (the
  ``should_stop`` reads, progress writes and heartbeats per second of training) — a noise-free bound.

The worker polls the queue at most every ``--max-delay`` seconds when idle (huey's default is 10 s,
which would dominate the start latency; ``make run`` should pass ``-m``).
"""
from __future__ import annotations

import sys
from pathlib import Path

# This file is named queue.py and Python puts its folder first on sys.path when it runs as a script,
# which would shadow the standard library's ``queue`` (torch imports it): drop that entry first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402 - after the sys.path fix above
import os  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def wait_for(predicate, timeout: float, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError("the benchmark waited too long; is the worker running? see its log")


def start_worker(home: Path, max_delay: float) -> subprocess.Popen:
    from storage import db as store

    from engine.jobs.queue import worker_command

    log = open(home / "worker.log", "ab")
    env = {**os.environ, "ML_MANAGER_HOME": str(home)}
    proc = subprocess.Popen(worker_command(max_delay_s=max_delay), cwd=ROOT, env=env, stdout=log, stderr=log)
    wait_for(lambda: store.worker_heartbeat() is not None, 60, 0.1)
    return proc


def queued_run(config: dict, dataset: Path, stop_after_first_epoch: bool = False) -> dict:
    from engine import jobs
    from storage import db as store

    model_id = store.create_model("bench", config, str(dataset))
    t0 = time.monotonic()
    jobs.start_training(model_id, config)
    first_batch = wait_for(lambda: (store.get_model(model_id)["batch"] or 0) >= 1, 120) - t0
    result = {"first_batch_s": first_batch}
    if stop_after_first_epoch:
        wait_for(lambda: (store.get_model(model_id)["epochs_run"] or 0) >= 1, 300, 0.05)
        time.sleep(0.3)
        t1 = time.monotonic()
        jobs.stop_training(model_id)
        result["stop_s"] = wait_for(lambda: store.get_model(model_id)["status"] not in ("running", "stopping"),
                                    60) - t1
    else:
        wait_for(lambda: store.get_model(model_id)["status"] in ("completed", "failed"), 900, 0.1)
        row = store.get_model(model_id)
        if row["status"] != "completed":
            raise RuntimeError(f"the queued training failed: {row['error']}")
        epochs = store.model_metrics(model_id)
        result["patches_per_s"] = [config["steps_per_epoch"] * config["batch_size"] / e["seconds"] for e in epochs]
    return result


def direct_run(config: dict, dataset: Path, out: Path) -> list[float]:
    from engine.training.config import TrainingConfig
    from engine.training.loop import train

    rates = []
    train(TrainingConfig.from_dict(config), dataset, out,
          on_event=lambda e: rates.append(e["patches_per_s"]) if e["type"] == "epoch_end" else None)
    return rates


def bookkeeping_cost_ms_per_s(config: dict, dataset: Path) -> float:
    """Milliseconds per second of training the worker adds to the training thread, measured call by call.

    The training thread calls ``should_stop`` every step (a registry read at most every 0.5 s) and
    ``on_event`` for at most ~2 batch events per second; the heartbeat thread writes every 2 s. Unlike
    the throughput ratio, this does not drown in the noise of a shared machine.
    """
    from engine import jobs
    from engine.jobs.ledger import RegistryTraining
    from storage import db as store

    model_id = store.create_model("overhead", config, str(dataset))
    store.update_model(model_id, status="running")
    conn = store.connect()
    ledger = RegistryTraining(model_id)
    ledger.conn = conn
    stopper, progress = jobs.StopPoller(ledger.stop_requested), jobs.ProgressRecorder(model_id, conn)
    progress({"type": "start", "start_epoch": 1, "total_epochs": 3, "steps_per_epoch": 20, "n_train": 4,
              "n_val": 1, "device": "cpu"})

    def per_call(fn, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    stopper()  # first poll
    cheap = per_call(stopper, 20_000)  # between polls

    def poll():
        stopper._last = 0.0
        stopper()

    def batch_event():
        progress._last_write = 0.0
        progress({"type": "batch", "epoch": 1, "step": 3, "steps": 20, "loss": 0.5})

    reads, writes = per_call(poll, 200), per_call(batch_event, 200)
    beat = per_call(lambda: store.beat_worker(db=conn), 100)
    conn.close()
    steps_per_s = 20  # generous: the benchmark's steps take ~0.1 s each
    seconds = steps_per_s * cheap + reads / jobs.STOP_POLL_S + 2 * writes + beat / jobs.BEAT_S
    return seconds * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="trainings per mode (default 2)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch (default 20)")
    parser.add_argument("--max-delay", type=float, default=0.5, help="worker's idle polling limit, s (default 0.5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both modes (default 1)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlm-bench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        os.environ["ML_MANAGER_HOME"] = str(home)
        from engine.training.synthetic import make_synthetic_dataset

        dataset = make_synthetic_dataset(Path(tmp) / "synth", n_images=6, size=128, seed=0)
        config = {"base_channels": 8, "depth": 3, "patch_size": 64, "batch_size": 8, "epochs": args.epochs,
                  "steps_per_epoch": args.steps, "num_threads": args.threads, "early_stopping_patience": 0,
                  "calibrate_postprocess": False, "device": "cpu"}
        worker = start_worker(home, args.max_delay)
        try:
            cold = queued_run(config, dataset)
            warm, direct, queued, stops = [], [], [], []
            for i in range(args.repeats):  # interleaved, alternating which goes first, so load spikes hit both
                if i % 2:
                    run = queued_run(config, dataset)
                direct += direct_run(config, dataset, Path(tmp) / f"direct{i}")
                if not i % 2:
                    run = queued_run(config, dataset)
                warm.append(run["first_batch_s"])
                queued += run["patches_per_s"]
            for _ in range(args.repeats):
                stops.append(queued_run({**config, "epochs": 1000}, dataset, stop_after_first_epoch=True)["stop_s"])
            queued += cold["patches_per_s"]
            overhead_ms = bookkeeping_cost_ms_per_s(config, dataset)
        finally:
            worker.send_signal(signal.SIGINT)
            worker.wait(60)

    q_rate, d_rate = statistics.median(queued), statistics.median(direct)
    q_best, d_best = max(queued), max(direct)  # the least disturbed epoch: robust on a shared machine
    rows = [
        ("start → first batch, cold (s)", f"{cold['first_batch_s']:.2f}", "", ""),
        ("start → first batch, warm (s)", f"{statistics.median(warm):.2f}", "", ""),
        ("stop → run ended (s)", f"{statistics.median(stops):.2f}", "", "target < 2 s"),
        ("throughput, median epoch (patches/s)", f"{q_rate:.1f}", f"{d_rate:.1f}",
         f"{q_rate / d_rate:.3f} (target ≥ 0.95)"),
        ("throughput, best epoch (patches/s)", f"{q_best:.1f}", f"{d_best:.1f}",
         f"{q_best / d_best:.3f} (target ≥ 0.95)"),
        ("queue bookkeeping (ms per s of training)", f"{overhead_ms:.2f}", "0", f"{1 - overhead_ms / 1000:.4f} (bound)"),
    ]
    print(f"{'measure':<42} {'queue':>8} {'direct':>8}  ratio queue/direct")
    for name, queue_value, direct_value, ratio in rows:
        print(f"{name:<42} {queue_value:>8} {direct_value:>8}  {ratio}")
    print(f"({args.repeats} repeats, {args.epochs} epochs × {args.steps} steps of batch 8 at 64×64, "
          f"{args.threads} torch thread(s), worker idle polling ≤ {args.max_delay} s; medians over epochs / runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
