"""tools/bench's reading of ``strace -c`` summaries (strace 6.1's layout), where blank columns are common."""

from __future__ import annotations

from tools.bench.strace import SyscallCount, parse_summary

SUMMARY = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.12    0.004012           2      2000           close
 30.00    0.003000           1      3000      1000 accept4
 20.00    0.002000           1      2000      2000 connect
  9.88    0.000988         988         1           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           1      7001      3000 total
"""


def test_totals_and_calls_by_name_are_read_by_column() -> None:
    calls, errors, by_name = parse_summary(SUMMARY)
    assert (calls, errors) == (7001, 3000)
    assert by_name == {"close": 2000, "accept4": 3000, "connect": 2000, "epoll_wait": 1}


def test_a_total_without_failed_calls_counts_none() -> None:
    text = SUMMARY.replace("7001      3000 total", "7001           total")
    assert parse_summary(text)[:2] == (7001, 0)


def test_no_table_means_no_call() -> None:
    # strace prints nothing at all when the traced processes made no system call
    assert parse_summary("") == (0, 0, {})


def test_per_request_figures() -> None:
    count = SyscallCount("get12", "A", 1, requests=1000, calls=16000, errors=2000)
    assert (count.per_request, count.errors_per_request) == (16.0, 2.0)
