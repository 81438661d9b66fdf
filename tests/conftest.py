"""Shared fixtures: a real temporary data home, small synthetic images, the DRIVE folder."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVE_DIR = ROOT.parent / "shared" / "data" / "drive" / "training"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep torch and BLAS from fighting over the two cores of a CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The files that take longest, slowest first (measured one at a time on the shared 2-core machine; the commit that
# last changed this list gives the seconds). `make test` hands whole files to its processes in collection order
# (`--dist loadfile --no-loadscope-reorder`), so these start first and the short files fill in around them;
# xdist's own order (most tests first) started the long README, remote and browser files last: they set the tail.
SLOWEST_FIRST = (
    "test_readme_command_line.py", "test_browser_traps.py", "test_remote.py", "test_browser_tuner.py",
    "test_remote_outbox.py", "test_browser.py", "test_crash.py", "test_bad_input_cli.py", "test_jobs.py",
    "test_browser_session.py", "test_readme_several_machines.py", "test_cli.py", "test_api_jobs.py",
    "test_readme_http_api.py", "test_pretrained.py", "test_bounded_memory.py", "test_readme_commands.py",
    "test_storage.py", "test_resume.py", "test_housekeeping_worker.py", "test_pages_inference.py",
    "test_pages_train.py", "test_fov.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which would make a plain loadfile scheduler
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, except that the file queued behind a slow one is a short one.

    A process is handed its next file when two tests of its current one are left (it needs the next test to know
    what to tear down), so the next file waits behind those two: behind a file of SLOWEST_FIRST that is the last
    file of the queue (the short ones are at its end), and the next slow file goes to a process that is free."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ShortBehindSlow(LoadFileScheduling):
        def _assign_work_unit(self, node):
            running = [scope for scope, tests in self.assigned_work.get(node, {}).items() if not all(tests.values())]
            if any(Path(scope).name in SLOWEST_FIRST for scope in running) and len(self.workqueue) > 1:
                self.workqueue.move_to_end(next(reversed(self.workqueue)), last=False)
            super()._assign_work_unit(node)

    return ShortBehindSlow(config, log)


@pytest.fixture(params=[False, True], ids=["cpu-without-bf16", "cpu-with-bf16"])
def cpu_bf16(request, monkeypatch) -> bool:
    """Whether the CPU computes bf16 natively, pinned: a test that asks for it runs once for each answer, so
    its expectations hold on every machine (an AMD EPYC or a Xeon with AMX as well as a CPU without)."""
    from engine.training import device

    monkeypatch.setattr(device, "cpu_bf16", lambda: request.param)
    return request.param


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, real data home (ML_MANAGER_HOME) for one test."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("ML_MANAGER_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def drive_dir() -> Path:
    """The DRIVE training images, or a skip that says why they are missing."""
    if not (DRIVE_DIR / "images").is_dir():
        pytest.skip(f"DRIVE data set not found at {DRIVE_DIR} (it lives in ../shared, absent on a fresh clone)")
    return DRIVE_DIR


@pytest.fixture(scope="session")
def bad_input_template(tmp_path_factory) -> tuple[Path, str]:
    """The bad-input table's data home (tests/bad_input_helpers.py): one really trained, registered run,
    trained once for all the tests/test_bad_input_*.py files."""
    from tests.bad_input_helpers import make_template_home

    return make_template_home(tmp_path_factory.mktemp("template") / "home")


@pytest.fixture
def ctx(bad_input_template, tmp_path, monkeypatch):
    """One bad-input row's own copy of that data home, set as ML_MANAGER_HOME (a tests.bad_input_helpers.Ctx)."""
    from storage import paths
    from tests.bad_input_helpers import copy_template

    made = copy_template(bad_input_template, tmp_path)
    monkeypatch.setenv(paths.HOME_ENV, str(made.home))
    return made


@pytest.fixture(scope="session")
def served_api(tmp_path_factory):
    """`streamlit run server.py` and a real worker on one data home holding a synthetic data set, started once
    for tests/test_api*.py (tests/api_helpers.py; its ``api`` fixture puts a module on that home)."""
    from engine.training.synthetic import make_synthetic_dataset
    from tests.api_helpers import Server
    from tests.worker_helpers import Worker

    home = tmp_path_factory.mktemp("api_home")
    (home / "logs").mkdir()
    make_synthetic_dataset(home / "datasets" / "synth", n_images=4, size=64, seed=1)
    with pytest.MonkeyPatch.context() as mp:  # only while the two processes start: they keep their own copy
        mp.setenv("ML_MANAGER_HOME", str(home))
        mp.delenv("ML_MANAGER_API_FOLDERS", raising=False)
        with Worker(home):
            server = Server(home)
            mp.undo()
            try:
                yield server
            finally:
                server.stop()


@pytest.fixture
def readme_shell(tmp_path):
    """A shell for one of the README's ```bash blocks on a fresh data home (tests/readme_helpers.py); what it
    started is stopped with Ctrl-C at the end."""
    from tests.readme_helpers import new_shell

    with new_shell(tmp_path) as shell:
        yield shell
