"""The one thread-pool fan-out (dspydantic._fanout) behind every synchronous batch."""

from __future__ import annotations

import threading
import time

import pytest

from dspydantic._fanout import fan_out


def test_results_in_item_order_at_most_max_workers_at_a_time() -> None:
    lock = threading.Lock()
    running = 0
    peak = 0

    def fn(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02 * (x % 3))  # later items finish first
        with lock:
            running -= 1
        return x * x

    assert fan_out(fn, range(12), 3) == [x * x for x in range(12)]
    assert peak == 3


def test_one_worker_runs_in_the_calling_thread() -> None:
    me = threading.get_ident()
    assert fan_out(lambda _: threading.get_ident(), range(4), 1) == [me] * 4
    assert fan_out(lambda _: threading.get_ident(), ["only"], 8) == [me]
    assert fan_out(lambda x: x, [], 4) == []


class Stop(BaseException):
    pass


def test_the_first_error_in_item_order_is_raised_once_every_call_ended() -> None:
    ended: list[int] = []

    def fn(x: int) -> int:
        if x == 1:
            time.sleep(0.05)
            raise Stop("first")
        if x == 3:
            raise Stop("second")
        time.sleep(0.1)
        ended.append(x)
        return x

    with pytest.raises(Stop, match="first"):
        fan_out(fn, range(5), 5)
    assert sorted(ended) == [0, 2, 4]  # no worker was still running when the caller saw the error
