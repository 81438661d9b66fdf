"""A remote worker's reports that the dashboard could not take yet, kept on the worker's disk and sent in order.

A worker reports a run's events, checkpoints and outcome over HTTP. When the dashboard cannot be reached
(restarted, or the network away for a while) a report is written to ``<worker's data home>/outbox/`` instead,
one JSON file per report named by its sequence number (a checkpoint travels as a copy beside it, since the
training overwrites ``last.pt``), each written atomically. While the outbox holds anything, every new report
joins the end of it, so the dashboard receives them in the order they were made; :meth:`Outbox.drain` sends
them (the heartbeat thread calls it, so a run that ended while the dashboard was away, or a worker started
again, still delivers everything). A report the dashboard refuses (a 4xx answer) is logged in one line and
dropped: it would be refused again.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from engine.remote.client import Dashboard, DashboardError
from storage import paths

log = logging.getLogger("huey.ml_manager.remote")

UNREACHABLE = (0, 502, 503, 504)  # the dashboard (or a proxy in front of it) away: try again later


class Outbox:
    """Reports to the dashboard, sent now or kept in ``folder`` until the dashboard is back.

    Args:
        api: the dashboard's client.
        folder: where kept reports live (``<data home>/outbox``).
    """

    def __init__(self, api: Dashboard, folder: Path):
        self.api, self.folder = api, folder
        self._lock = threading.Lock()

    def send(self, method: str, path: str, body: dict | None = None, file: Path | None = None,
             query: dict | None = None) -> Any:
        """Deliver one report (a JSON ``body``, or ``file`` uploaded with ``query``) now, or keep it.

        Returns:
            The dashboard's answer; None when the report was kept for later.
        Raises:
            DashboardError: the dashboard refused the report (nothing is kept).
        """
        with self._lock:
            if not self._reports():
                try:
                    return self._deliver(method, path, body, file, query)
                except DashboardError as exc:
                    if exc.status not in UNREACHABLE:
                        raise
                    reason = str(exc)
            else:
                reason = "earlier reports are still waiting"
            self._keep(method, path, body, file, query)
            log.warning("report %s %s kept on this worker's disk (%d waiting): %s", method, path,
                        len(self._reports()), reason)
            self._drain_locked()
            return None

    def drain(self) -> int:
        """Send the kept reports in order until one cannot be delivered; returns how many still wait.
        Does nothing (and returns the count) while another thread is sending."""
        if not self._lock.acquire(blocking=False):
            return len(self)
        try:
            return self._drain_locked()
        finally:
            self._lock.release()

    def __len__(self) -> int:
        return len(self._reports())

    def runs(self) -> dict[str, str]:
        """The runs with reports waiting: model id -> the worker id the reports carry (a worker started again
        has a new id; the dashboard knows the run by the one that claimed it)."""
        held: dict[str, str] = {}
        for report in self._reports():
            try:
                item = json.loads(report.read_text())
            except (OSError, ValueError):
                continue
            if item.get("model_id") and item.get("worker_id"):
                held[item["model_id"]] = item["worker_id"]
        return held

    # ------------------------------------------------------------------ on disk

    def _reports(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.json") if p.stem.isdigit())

    def _keep(self, method: str, path: str, body: dict | None, file: Path | None, query: dict | None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        reports = self._reports()
        number = int(reports[-1].stem) + 1 if reports else 1
        sender = (body or query or {}).get("worker_id")
        parts = path.strip("/").split("/")
        model_id = parts[2] if len(parts) > 2 and parts[1] == "trainings" else None
        item = {"method": method, "path": path, "body": body, "query": query, "file": None,
                "model_id": model_id, "worker_id": sender}
        if file is not None:
            for older in reports:  # an unsent copy of the same checkpoint is out of date now
                if json.loads(older.read_text()).get("path") == path:
                    self._forget(older)
            copy = self.folder / f"{number:09d}.file"
            tmp = copy.with_name(f".{copy.name}.{os.getpid()}.tmp")
            shutil.copyfile(file, tmp)
            os.replace(tmp, copy)
            item["file"] = copy.name
        paths.atomic_write_bytes(self.folder / f"{number:09d}.json", json.dumps(item).encode())

    def _forget(self, report: Path) -> None:
        report.unlink(missing_ok=True)
        report.with_suffix(".file").unlink(missing_ok=True)

    def _deliver(self, method: str, path: str, body: dict | None, file: Path | None, query: dict | None) -> Any:
        if file is not None:
            return self.api.upload(path, file, query)
        return self.api.call(method, path, body, query)

    def _drain_locked(self) -> int:
        reports, sent = self._reports(), 0
        for n, report in enumerate(reports):
            try:
                item = json.loads(report.read_text())
                file = self.folder / item["file"] if item.get("file") else None
                self._deliver(item["method"], item["path"], item.get("body"), file, item.get("query"))
                sent += 1
            except DashboardError as exc:
                if exc.status in UNREACHABLE:
                    if sent:
                        log.info("%d kept report(s) sent to the dashboard, %d still wait", sent, len(reports) - n)
                    return len(reports) - n
                log.warning("kept report %s %s refused by the dashboard and dropped: %s", item["method"],
                            item["path"], exc)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("kept report %s is unreadable and was dropped: %s", report.name, exc)
            self._forget(report)
        if sent:
            log.info("%d kept report(s) sent to the dashboard", sent)
        for orphan in self.folder.glob("*.file") if self.folder.is_dir() else []:  # its report was sent
            if not orphan.with_suffix(".json").exists():
                orphan.unlink(missing_ok=True)
        return 0
