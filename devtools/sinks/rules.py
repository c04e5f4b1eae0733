"""How the sinks misbehave, by recipient pattern (see ``devtools.sinks``)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class FailureRules:
    """How the sinks misbehave, by recipient pattern; empty patterns never match."""

    reject: str = ""
    flaky: str = ""
    flaky_times: int = 1
    throttle: str = ""
    throttle_times: int = 1
    retry_after_s: float = 1.0
    slow: str = ""
    slow_s: float = 5.0

    @staticmethod
    def _matches(pattern: str, recipient: str) -> bool:
        return bool(pattern) and re.search(pattern, recipient) is not None

    def rejects(self, recipient: str) -> bool:
        return self._matches(self.reject, recipient)

    def fails(self, recipient: str, attempt: int) -> bool:
        return self._matches(self.flaky, recipient) and attempt <= self.flaky_times

    def throttles(self, recipient: str, attempt: int) -> bool:
        return self._matches(self.throttle, recipient) and attempt <= self.throttle_times

    def delay_for(self, recipient: str) -> float:
        return self.slow_s if self._matches(self.slow, recipient) else 0.0

    def as_args(self) -> list[str]:
        args = []
        if self.reject:
            args += ["--reject", self.reject]
        if self.flaky:
            args += ["--flaky", f"{self.flaky}:{self.flaky_times}"]
        if self.throttle:
            args += ["--throttle", f"{self.throttle}:{self.throttle_times}:{self.retry_after_s}"]
        if self.slow:
            args += ["--slow", f"{self.slow}:{self.slow_s}"]
        return args
