"""Evaluation passes split over forked worker processes on a multi-core CPU.

Why: SmolLM2's 576-wide matrices parallelise poorly inside one operation. On this project's 2-core
CPU two single-thread processes, each scoring and answering half of the questions, finish the
TOFU-mini pass in 0.905x the time of one process with 2 threads
(`python benchmarks/eval_workers.py`, `benchmarks/results/eval_workers.json`).

The children are forked inside the caller's `eval_mode`, so they share the parent's weights and
their prepacked copies copy-on-write: no reload, no second copy. Each runs its share with
`threads // workers` threads, reports progress and sends its result back over a pipe; the parent
only waits. A child never touches the terminal (the parent's progress bar runs a thread that may
hold the console's lock at the fork).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, Literal, TypeVar

import torch

T = TypeVar("T")

# a share below this many questions is not worth a process
MIN_SHARE = 8


def worker_count(setting: int | Literal["auto"], device: torch.device, items: int) -> int:
    """How many processes an evaluation pass over `items` questions uses: 1 off Linux, on an
    accelerator or inside a distributed run (forking there is unsafe or pointless); `auto` = one
    per CPU thread torch may use, while each keeps at least MIN_SHARE questions."""
    if device.type != "cpu" or not sys.platform.startswith("linux") or _distributed():
        return 1
    wanted = torch.get_num_threads() if setting == "auto" else setting
    return max(1, min(wanted, items // MIN_SHARE if setting == "auto" else items))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def balanced_shares(costs: Sequence[float], workers: int) -> list[list[int]]:
    """Indices of `costs` split into `workers` shares of similar total cost (the largest first, each
    to the lightest share), each share in input order."""
    shares: list[list[int]] = [[] for _ in range(workers)]
    totals = [0.0] * workers
    for index in sorted(range(len(costs)), key=lambda i: -costs[i]):
        lightest = totals.index(min(totals))
        shares[lightest].append(index)
        totals[lightest] += costs[index]
    return [sorted(share) for share in shares if share]


class RemoteBar:
    """What a child sees of the parent's rich Progress: `task_ids` and `advance`, sent as messages."""

    def __init__(self, conn: Connection, tasks: int) -> None:
        self._conn = conn
        self.task_ids = list(range(tasks))

    def advance(self, task_id: int, amount: float = 1) -> None:
        self._conn.send_bytes(pickle.dumps(("advance", task_id, amount)))


def run_in_workers(jobs: Sequence[Callable[[Any], T]], bar: Any) -> list[T]:
    """Run each job (called with a progress bar like `bar`) in a forked child with
    `threads // len(jobs)` torch threads; their results in job order. A failed or killed child
    stops the pass with its traceback or exit code."""
    context = multiprocessing.get_context("fork")
    threads = max(1, torch.get_num_threads() // len(jobs))
    children, pipes = [], []
    try:
        for job in jobs:
            receive, send = context.Pipe(duplex=False)
            child = context.Process(target=_child, args=(job, send, threads, len(bar.task_ids)), daemon=True)
            child.start()
            send.close()  # the parent's copy: EOF once the child exits
            children.append(child)
            pipes.append(receive)
        results: dict[int, T] = {}
        open_pipes = dict(enumerate(pipes))
        while open_pipes:
            for conn in wait(list(open_pipes.values())):
                index = next(k for k, c in open_pipes.items() if c is conn)
                try:
                    # from our own forked child, not from a file: pickle is safe here
                    kind, *payload = pickle.loads(conn.recv_bytes())
                except EOFError:
                    children[index].join()
                    raise RuntimeError(
                        f"evaluation worker {index + 1}/{len(jobs)} ended without a result "
                        f"(exit code {children[index].exitcode}; -9 is a kill, often for memory: "
                        "try --set eval.workers=1)"
                    ) from None
                if kind == "advance":
                    bar.advance(bar.task_ids[payload[0]], payload[1])
                elif kind == "error":
                    raise RuntimeError(f"evaluation worker {index + 1}/{len(jobs)} failed:\n{payload[0]}")
                else:
                    results[index] = payload[0]
                    del open_pipes[index]
        return [results[k] for k in range(len(jobs))]
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join()
        for conn in pipes:
            conn.close()


def _child(job: Callable[[Any], Any], conn: Connection, threads: int, tasks: int) -> None:
    torch.set_num_threads(threads)
    try:
        result = job(RemoteBar(conn, tasks))
        conn.send_bytes(pickle.dumps(("done", result)))
    except BaseException:  # everything goes back to the parent, which raises it
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc())))
    finally:
        conn.close()
        os._exit(0)  # skip the parent's atexit handlers and finalisers, copied by the fork
