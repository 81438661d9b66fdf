"""The one runner (engine.jobs.runner) over a ledger kept in memory: what it asks the ledger, in which order,
and what it records; the stop poller; the JSON-safe values both ledgers send. The runner over the real
ledgers is tests/test_task_bodies.py (the registry) and tests/test_remote.py (the HTTP API)."""
from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
from huey.exceptions import RetryTask

from engine.errors import UserError
from engine.jobs import ledger as ledgers
from engine.jobs.runner import StopPoller, run_job, run_training


class Ledger:
    """A ledger that writes down every verb the runner calls."""

    def __init__(self, claimed, read_error: Exception | None = None):
        self.model_id = self.job_id = "run-1"
        self.claimed, self.read_error, self.calls = claimed, read_error, []

    def holding(self):
        self.calls.append("holding")
        return nullcontext()

    def claim(self):
        self.calls.append("claim")
        return self.claimed

    def read_order(self):
        self.calls.append("read_order")
        raise self.read_error

    def fail(self, error: str) -> None:
        self.calls.append(("fail", error))

    def close(self) -> None:
        self.calls.append("close")


def test_a_training_without_a_free_slot_asks_again():
    with pytest.raises(RetryTask):
        run_training(Ledger(claimed=False))


@pytest.mark.parametrize("run", [run_training, run_job])
def test_a_run_no_longer_queued_is_left_alone(run):
    ledger = Ledger(claimed=None if run is run_training else False)
    run(ledger)
    assert ledger.calls == ["holding", "claim"]


@pytest.mark.parametrize("run, calls", [
    (run_training, ["holding", "claim", "read_order", ("fail", "The data set is gone."), "close"]),
    (run_job, ["holding", "claim", "read_order", ("fail", "The data set is gone.")]),
])
def test_a_failure_after_the_claim_becomes_the_runs_error(run, calls):
    ledger = Ledger(claimed=True, read_error=UserError("The data set is gone."))
    run(ledger)
    assert ledger.calls == calls


@pytest.mark.parametrize("answers, stopping, expected", [
    ([False], False, (False, None)),
    ([True], False, (True, "user")),
    ([False], True, (True, "shutdown")),
])
def test_the_stop_poller_says_why_it_stopped(answers, stopping, expected):
    poller = StopPoller(lambda: answers.pop(0), lambda: stopping)
    assert (poller(), poller.reason) == expected


def test_the_stop_poller_asks_the_ledger_at_most_every_poll_period():
    asked = []
    poller = StopPoller(lambda: asked.append(1) or False, lambda: False)
    for _ in range(1000):
        poller()
    assert len(asked) == 1  # 1000 calls take far less than STOP_POLL_S


@pytest.mark.parametrize("value, expected", [
    (float("nan"), None),
    (math.inf, None),
    (0.5, 0.5),
    ({"loss": float("nan"), "epoch": 2}, {"loss": None, "epoch": 2}),
    ([1.0, -math.inf, (2, float("nan"))], [1.0, None, [2, None]]),
    ("text", "text"),
])
def test_json_safe_values(value, expected):
    assert ledgers.json_safe(value) == expected
