"""Start the real worker and dashboard on a free port, and drive Streamlit widgets in chromium.

Shared by tests/test_browser.py and benchmarks/ui_latency.py.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from engine.jobs.queue import worker_command

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict:
    return {**os.environ, "ML_MANAGER_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _stop(proc: subprocess.Popen, sig=signal.SIGINT, wait: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def worker(home: Path):
    """A real Huey consumer (engine.jobs.huey) on ``home``; stopped gracefully at the end."""
    log = open(home / "worker_test.log", "ab")
    proc = subprocess.Popen(worker_command(), cwd=ROOT, env=_env(home), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        _stop(proc)
        log.close()


@contextlib.contextmanager
def dashboard(home: Path, script: str | Path = "server.py", timeout: float = 90):
    """``streamlit run`` on a free port (server.py: the dashboard and its HTTP API, as ``make run``
    serves them); yields the base URL once /_stcore/health answers."""
    port = free_port()
    log = open(home / f"streamlit_{port}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=_env(home), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start; see {log.name}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc, signal.SIGTERM)
        log.close()


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


@contextlib.contextmanager
def served_dashboard(tmp_path_factory, name: str):
    """(base URL, data home) of one dashboard on a fresh data home; ML_MANAGER_HOME points the test process
    there too. For a module-scoped ``served`` fixture: ``with served_dashboard(tmp_path_factory, "x") as s: yield s``."""
    import pytest

    home = tmp_path_factory.mktemp(name) / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ML_MANAGER_HOME", str(home))
        with dashboard(home) as url:
            yield url, home


@contextlib.contextmanager
def browser_page(width: int = 1280, height: int = 800, timeout_ms: int = 60_000):
    """A page of a fresh headless chromium at ``width``×``height``, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(timeout_ms)
        try:
            yield page
        finally:
            browser.close()


# --------------------------------------------------------------------------- Streamlit widgets
def wait_idle(page, timeout: float = 60_000) -> None:
    """Wait until the script run has finished (the status widget shows no 'Running')."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout)


def open_expander(page, title: str) -> None:
    summary = page.locator("[data-testid='stExpander'] summary", has_text=title).first
    details = summary.locator("xpath=..")
    if details.get_attribute("open") is None:
        summary.click()


def set_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True).first
    box.fill(str(value))
    box.press("Tab")


def slider_input(page, label: str):
    """The slider's range input (Streamlit 1.67 draws sliders with react-aria: a hidden input[type=range])."""
    return page.locator(f"[data-testid='stSlider'] input[type='range'][aria-label='{label}']").first


def move_slider(page, label: str, steps: int) -> None:
    """Press an arrow key ``steps`` times on the slider (negative = left); each release commits a value."""
    thumb = slider_input(page, label)
    thumb.focus()
    key = "ArrowRight" if steps > 0 else "ArrowLeft"
    for _ in range(abs(steps)):
        thumb.press(key)
