"""What :meth:`~infoshape.testing.PluginTester.check_all` ran: one result per check.

A :class:`CheckReport` holds, for each conformance check, its name, whether it passed,
failed or was skipped (with the failure or the reason), and how long it took;
:meth:`CheckReport.summary` is the text ``check_all`` prints::

    PluginTester 'shade': 7 checks
      PASS  check_loads                   0.01 s
      SKIP  check_config                  0.00 s  the plugin has no Config (no options)
      ...
    7 checks: 6 passed, 1 skipped, 0 failed in 1.23 s
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Literal

import attrs

__all__ = ["CheckReport", "CheckResult", "Status", "run_checks"]

Status = Literal["passed", "failed", "skipped"]
_LABEL = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}


@attrs.frozen(kw_only=True)
class CheckResult:
    """One conformance check's outcome.

    Attributes:
        name: the check method's name (``"check_loads"``).
        status: ``"passed"``, ``"failed"`` or ``"skipped"``.
        duration_s: wall-clock seconds the check took.
        reason: the failure's message, or why the check was skipped; empty when passed.
    """

    name: str
    status: Status
    duration_s: float
    reason: str = ""

    @property
    def passed(self) -> bool:
        """Whether the check passed."""
        return self.status == "passed"

    @property
    def skipped(self) -> bool:
        """Whether the check was skipped (:attr:`reason` says why)."""
        return self.status == "skipped"

    @property
    def failed(self) -> bool:
        """Whether the check failed (:attr:`reason` holds the message)."""
        return self.status == "failed"


@attrs.frozen(kw_only=True)
class CheckReport:
    """The results of every check :meth:`~infoshape.testing.PluginTester.check_all` ran.

    Attributes:
        plugin: the plugin's name.
        results: one :class:`CheckResult` per check, in the order they ran.
    """

    plugin: str
    results: tuple[CheckResult, ...]

    def count(self, status: Status) -> int:
        """How many checks ended with ``status``."""
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        """No check failed (skipped checks do not count as failures)."""
        return self.count("failed") == 0

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """The failed checks."""
        return tuple(r for r in self.results if r.failed)

    @property
    def duration_s(self) -> float:
        """Seconds all checks took together."""
        return sum(r.duration_s for r in self.results)

    def __getitem__(self, name: str) -> CheckResult:
        """The result of the check called ``name``."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no check {name!r}; ran {', '.join(r.name for r in self.results)}")

    def counts_line(self) -> str:
        """``"7 checks: 6 passed, 1 skipped, 0 failed in 1.23 s"``."""
        return (
            f"{len(self.results)} checks: {self.count('passed')} passed, "
            f"{self.count('skipped')} skipped, {self.count('failed')} failed "
            f"in {self.duration_s:.2f} s"
        )

    def summary(self) -> str:
        """One line per check (status, name, duration, the first line of any reason), counts."""
        width = max((len(r.name) for r in self.results), default=0)
        lines = [f"PluginTester {self.plugin!r}: {len(self.results)} checks"]
        for r in self.results:
            first = r.reason.strip().splitlines()[0] if r.reason.strip() else ""
            line = f"  {_LABEL[r.status]}  {r.name:<{width}}  {r.duration_s:6.2f} s"
            lines.append(f"{line}  {first}" if first else line)
        lines.append(self.counts_line())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def run_checks(
    plugin: str,
    checks: Mapping[str, Callable[[], None]],
    skip_reason: Callable[[str], str | None] = lambda check: None,
) -> CheckReport:
    """Run each check in order, timing it; an error fails it, a skip reason skips it.

    Args:
        plugin: the plugin's name, for the report.
        checks: check name to a callable that raises ``AssertionError`` on failure.
        skip_reason: the reason a check does not apply, or ``None`` (then it runs).
    """
    results = []
    for name, check in checks.items():
        start = time.perf_counter()
        status: Status = "passed"
        reason = skip_reason(name) or ""
        if reason:
            status = "skipped"
        else:
            try:
                check()
            except AssertionError as err:
                status, reason = "failed", str(err)
            except Exception as err:
                status, reason = "failed", f"raised {type(err).__name__}: {err}"
        duration = time.perf_counter() - start
        results.append(CheckResult(name=name, status=status, duration_s=duration, reason=reason))
    return CheckReport(plugin=plugin, results=tuple(results))
