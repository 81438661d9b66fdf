"""The same fixed-seed training on every kind of worker, fingerprinted: a refactor of the runner must leave
every epoch's numbers and every checkpoint's weights exactly as they were.

    .venv/bin/python benchmarks/same_runs.py --out before.json        # on the old code
    .venv/bin/python benchmarks/same_runs.py --out after.json         # on the new code
    .venv/bin/python benchmarks/same_runs.py --compare before.json after.json

Three runs of one config on one synthetic set (seed 0, fp32, 1 thread, CPU), each queued through the HTTP API
of a dashboard started as `make run` starts it:

* ``sqlite``: the default setup, huey's consumer on the SQLite queue file;
* ``local``: the Redis queue, `python -m engine worker` on the dashboard's machine (it writes the registry);
* ``remote``: the Redis queue, `python -m engine worker --server URL` on its own data home (everything over HTTP).

A fingerprint is every epoch's metrics (times left out), the run's final row (status, stop reason, best epoch
and metric, recommended post-processing) and, for every checkpoint file, the sha256 of each tensor and of the
metadata (times, hosts and temporary paths left out). ``--compare`` prints a table of what matches.
"""
from __future__ import annotations

import sys
from pathlib import Path

# this script's folder holds benchmarks/queue.py, which would stand in for the standard library's queue module
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.remote_helpers import Dashboard, RedisServer, RemoteWorker, wait_for  # noqa: E402

CONFIG = {"base_channels": 8, "depth": 2, "patch_size": 64, "batch_size": 4, "steps_per_epoch": 6, "epochs": 3,
          "num_threads": 1, "val_fraction": 0.25, "early_stopping_patience": 0, "calibrate_postprocess": True,
          "checkpoint_every": 1, "precision": "fp32", "device": "cpu", "seed": 0}
# keys whose values depend on when and where a run ran, not on what it computed
VOLATILE = re.compile(r"(^|_)(at|time|times|seconds|elapsed|host|worker|pid|eta|trained_s|versions|heartbeat|per_s|model_name)"
                      r"($|_)|_at$|^id$|model_id|task_id|created|queue")


def _digest(value, base: str):
    """A JSON-ready fingerprint of a checkpoint's content: tensors by sha256 of their bytes."""
    import torch

    if isinstance(value, torch.Tensor):
        data = value.detach().contiguous().cpu().reshape(-1)
        return f"tensor{tuple(value.shape)}:{hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()[:16]}"
    if isinstance(value, dict):
        return {str(k): _digest(v, base) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
                if not VOLATILE.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [_digest(v, base) for v in value]
    if isinstance(value, str):
        return value.replace(base, "<BASE>")
    if isinstance(value, float):
        return repr(value)
    return value


def fingerprint(dashboard: Dashboard, model_id: str, base: Path) -> dict:
    import torch

    status = dashboard.call("GET", f"/api/v1/training/status/{model_id}?history=1")[1]
    history = [{k: v for k, v in row.items() if not VOLATILE.search(k)} for row in status["history"]]
    final = {k: status.get(k) for k in ("status", "stop_reason", "error", "epochs_run", "best")}
    recorded = dashboard.call("GET", f"/api/v1/models/{model_id}/checkpoints")[1]["checkpoints"]
    final["checkpoint_rows"] = sorted(({k: v for k, v in row.items() if not VOLATILE.search(k) and k != "path"}
                                       for row in recorded), key=lambda row: str(row.get("name")))
    checkpoints = {}
    for path in sorted((dashboard.home / "models" / model_id / "checkpoints").glob("*.pt")):
        payload = torch.load(path, map_location="cpu", weights_only=True)
        checkpoints[path.name] = _digest(payload, str(base))
    return {"history": history, "final": final, "checkpoints": checkpoints}


def run_one(dashboard: Dashboard, queue: str | None) -> str:
    body = {"name": f"same-{queue or 'sqlite'}", "dataset": "datasets/synth", "training_config": CONFIG,
            "plan": False, **({"queue": queue} if queue else {})}
    status, answer = dashboard.call("POST", "/api/v1/training/start", body)
    assert status == 202, answer
    model_id = answer["model_id"]
    final = wait_for(lambda: (s := dashboard.status(model_id))["status"] in ("completed", "failed", "stopped") and s,
                     900, 0.2, f"the run on {queue or 'the SQLite queue'} to end")
    assert final["status"] == "completed", final
    return model_id


def _synth(home: Path) -> None:
    from engine.training.synthetic import make_synthetic_dataset

    make_synthetic_dataset(home / "datasets" / "synth", n_images=6, size=160, seed=0)


def measure(base: Path) -> dict:
    results = {}
    # the default setup: the SQLite queue and huey's consumer, as `make run` starts them
    home = base / "S"
    (home / "logs").mkdir(parents=True)
    _synth(home)
    os.environ.pop("ML_MANAGER_QUEUE", None)
    dashboard = Dashboard(home, {})
    os.environ["ML_MANAGER_HOME"] = str(home)  # the queue module reads it when first imported
    from engine.jobs.queue import worker_command

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(home / "logs" / "worker.log", "ab") as log:
        consumer = subprocess.Popen(worker_command(), cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        results["sqlite"] = fingerprint(dashboard, run_one(dashboard, None), base)
    finally:
        consumer.send_signal(signal.SIGINT)
        consumer.wait(60)
        dashboard.stop()
    # the Redis queue: a worker on the dashboard's machine and one with its own data home
    home = base / "A"
    (home / "logs").mkdir(parents=True)
    _synth(home)
    redis = RedisServer(base / "redis").start()
    dashboard = Dashboard(home, {"ML_MANAGER_QUEUE": redis.url, "ML_MANAGER_QUEUES": "local,remote"})
    local = remote = None
    try:
        env = {**os.environ, "ML_MANAGER_HOME": str(home), "ML_MANAGER_QUEUE": redis.url,
               "ML_MANAGER_QUEUES": "local,remote", "OMP_NUM_THREADS": "1"}
        with open(home / "logs" / "local-worker.log", "ab") as log:
            local = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--queues", "local"], cwd=ROOT, env=env,
                                     stdout=log, stderr=log)
        remote = RemoteWorker(base / "B", dashboard, "remote").start()
        results["local"] = fingerprint(dashboard, run_one(dashboard, "local"), base)
        results["remote"] = fingerprint(dashboard, run_one(dashboard, "remote"), base)
    finally:
        if local is not None:
            local.send_signal(signal.SIGINT)
            local.wait(60)
        if remote is not None:
            remote.stop()
        dashboard.stop()
        redis.stop()
    return results


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{index}]"))
        return out
    return {} if VOLATILE.search(prefix.rsplit(".", 1)[-1].split("[")[0]) else {prefix: value}


def compare(before: dict, after: dict) -> int:
    print(f"| {'worker':<7} | {'what':<40} | {'values':>7} | {'equal':>7} | {'differ':>6} |")
    print(f"|{'-' * 9}|{'-' * 42}|{'-' * 8}:|{'-' * 8}:|{'-' * 7}:|")
    differences = []
    for worker in sorted(set(before) | set(after)):
        for part in ("history", "final", "checkpoints"):
            a = _flatten(before.get(worker, {}).get(part, {}))
            b = _flatten(after.get(worker, {}).get(part, {}))
            keys = sorted(set(a) | set(b))
            same = [k for k in keys if a.get(k, "<missing>") == b.get(k, "<missing>")]
            label = {"history": "epoch metrics", "final": "final row",
                     "checkpoints": f"checkpoints ({len(before.get(worker, {}).get('checkpoints', {}))} files)"}[part]
            print(f"| {worker:<7} | {label:<40} | {len(keys):>7} | {len(same):>7} | {len(keys) - len(same):>6} |")
            differences += [(worker, k, a.get(k, "<missing>"), b.get(k, "<missing>")) for k in keys if k not in same]
    kinds = sorted(after)
    for part in ("history", "final", "checkpoints"):
        same = all(_flatten(after[k][part]) == _flatten(after[kinds[0]][part]) for k in kinds)
        print(f"| {'/'.join(kinds)}: {part} {'identical' if same else 'DIFFERENT'} across the workers (after)")
    for worker, key, old, new in differences[:40]:
        print(f"  {worker}: {key}: {old!r} -> {new!r}")
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the fingerprints here (JSON)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*(json.loads(p.read_text()) for p in args.compare))
    base = Path(tempfile.mkdtemp(prefix="ml-manager-same-runs-"))
    try:
        results = measure(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = json.dumps(results, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
