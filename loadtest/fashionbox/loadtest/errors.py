"""The load-test harness's exceptions: one root, a shallow tree.

::

    LoadTestError
     ├── LoadTestConfigError (also a ValueError)   a bad flag, shape, target or search space
     ├── TargetUnavailable                        a target did not answer or its model is not ready
     └── TuneError                                a configuration could not be applied or reloaded

Errors of single requests are never raised: they are counted by gRPC status in the report.
"""

from __future__ import annotations

__all__ = ["LoadTestConfigError", "LoadTestError", "TargetUnavailable", "TuneError"]


class LoadTestError(Exception):
    """Root of every error raised by ``fashionbox.loadtest``."""


class LoadTestConfigError(LoadTestError, ValueError):
    """An invalid setting: a flag, a load shape, a target, a corpus or a tuning space."""


class TargetUnavailable(LoadTestError):
    """A target did not answer, or the model under test is not ready on it."""


class TuneError(LoadTestError):
    """A tuned configuration could not be written or loaded by the server."""
