"""Under CI, a test skipped for want of a tool that CI installs is a failure, not a skip.

``scripts/install`` (run by ``.ci/run``) installs real uWSGI, nginx, wrk, strace, uwsgitop and prometheus_client, so a
skip naming one of them means the set-up is broken, and a green run would hide the tests that did not run.
Skips for other reasons (not root, no network namespaces here, the seed document absent) stay skips.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

import pytest

#: Tools ``scripts/install`` provides; a skip reason naming one of them fails under CI.
REQUIRED_IN_CI = re.compile(r"\b(nginx|wrk|strace|uWSGI|uwsgitop|prometheus_client|logrotate)\b(?!-)")


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not os.environ.get("CI") or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    if REQUIRED_IN_CI.search(reason):
        report.outcome = "failed"
        report.longrepr = f"CI is set and a tool that CI installs is missing, so this test may not skip: {reason}"
