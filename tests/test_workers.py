"""Evaluation passes split over forked worker processes (`eval.workers`)."""

import os
import signal

import pytest
import torch

from tokenforget.forward.workers import MIN_SHARE, balanced_shares, run_in_workers, worker_count


class RecordingBar:
    """The part of a rich Progress the scoring code uses."""

    def __init__(self) -> None:
        self.task_ids = [10, 11]
        self.advanced: list[tuple[int, float]] = []

    def advance(self, task_id: int, amount: float = 1) -> None:
        self.advanced.append((task_id, amount))


def test_balanced_shares_give_the_largest_cost_to_the_lightest_share():
    # by cost: 9 -> A, 7 -> B, 5 -> B (7 < 9), 4 -> A (9 < 12), 1 -> B (12 < 13): 13 and 13
    assert balanced_shares([5, 9, 1, 7, 4], 2) == [[1, 4], [0, 2, 3]]
    assert balanced_shares([3.0], 4) == [[0]]  # no empty shares


def test_worker_count_uses_one_process_per_thread_on_cpu_only(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    cpu = torch.device("cpu")
    assert worker_count("auto", cpu, 1000) == 4
    assert worker_count("auto", cpu, 2 * MIN_SHARE) == 2  # each share keeps MIN_SHARE questions
    assert worker_count("auto", cpu, MIN_SHARE - 1) == 1
    assert worker_count(3, cpu, 1000) == 3
    assert worker_count(3, cpu, 2) == 2
    assert worker_count("auto", torch.device("cuda"), 1000) == 1
    assert worker_count(3, torch.device("meta"), 1000) == 1


def test_jobs_run_in_forked_children_with_their_share_of_the_threads(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the parent's; children set theirs

    def job(bar, value):
        bar.advance(bar.task_ids[1], value)
        return os.getpid(), torch.get_num_threads(), value * 10

    bar = RecordingBar()
    results = run_in_workers([lambda b: job(b, 1), lambda b: job(b, 2)], bar)
    assert [r[2] for r in results] == [10, 20]  # in job order
    assert all(pid != os.getpid() for pid, _, _ in results) and results[0][0] != results[1][0]
    assert sorted(bar.advanced) == [(11, 1), (11, 2)]  # forwarded to the parent's tasks


def test_a_failing_or_killed_worker_stops_the_pass_with_its_cause():
    def fails(bar):
        raise ValueError("no such answer")

    with pytest.raises(RuntimeError, match=r"worker 2/2 failed:(.|\n)*ValueError: no such answer"):
        run_in_workers([lambda b: 1, fails], RecordingBar())

    def killed(bar):
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(RuntimeError, match=r"worker 1/2 ended without a result \(exit code -9"):
        run_in_workers([killed, lambda b: 2], RecordingBar())
