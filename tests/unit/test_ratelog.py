"""LogLimiter: at most N lines a second, then one line counting the rest (time passed in)."""

from __future__ import annotations

import logging

import pytest

from uwsgirouter.ratelog import LogLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_at_most_n_lines_a_second_then_one_counting_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("test.ratelog"), per_second=3, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        written = [limiter.warning("bad request %d", number) for number in range(10)]
        assert written == [True] * 3 + [False] * 7
        assert [r.getMessage() for r in caplog.records] == ["bad request 0", "bad request 1", "bad request 2"]
        clock.now += 0.5
        limiter.flush()
        assert len(caplog.records) == 3, "no summary before the second is over"
        clock.now += 0.6
        limiter.flush()
        assert caplog.records[-1].getMessage() == "7 more lines like these in the last second were left out"
        assert limiter.info("next") and caplog.records[-1].getMessage() == "next"
        clock.now += 5
        limiter.flush()
        assert caplog.records[-1].getMessage() == "next", "nothing left out, no summary"


def test_exception_lines_carry_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    limiter = LogLimiter(logging.getLogger("test.ratelog"), per_second=1, clock=Clock())
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        try:
            raise ValueError("boom")
        except ValueError:
            limiter.exception("mapper raised")
            assert not limiter.exception("mapper raised again")
    assert caplog.records[0].exc_info is not None and len(caplog.records) == 1


def test_one_line_left_out_is_said_in_the_singular(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("test.ratelog"), per_second=1, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        limiter.warning("a")
        limiter.warning("b")
        clock.now += 1
        limiter.flush()
    assert caplog.records[-1].getMessage() == "1 more line like these in the last second was left out"
