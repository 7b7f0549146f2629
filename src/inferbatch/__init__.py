"""inferbatch: run large batches of chat completions against OpenAI-compatible APIs, safely and fast.

import asyncio, os
from inferbatch import resolve, run_batch

cfg = resolve({"input": "prompts.jsonl", "output": "out.jsonl", "concurrency": 8}, os.environ)
report = asyncio.run(run_batch(cfg))
print(report.outcome, report.summary.as_dict())
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "__version__",
    "RunConfig",
    "resolve",
    "run_batch",
    "RunReport",
    "Outcome",
    "Result",
    "Status",
    "simulated",
    "InferbatchError",
    "ConfigError",
    "InputError",
    "CheckpointError",
    "SafetyStop",
    "AuthFailed",
    "TooManyFailures",
    "BudgetExceeded",
    "DeadlineReached",
    "Interrupted",
]

# Lazy, so `inferbatch --help` does not pay for importing aiohttp and pyarrow.
_WHERE = {
    "RunConfig": "inferbatch.config",
    "resolve": "inferbatch.config",
    "run_batch": "inferbatch.runner",
    "RunReport": "inferbatch.runner",
    "Outcome": "inferbatch.runner",
    "Result": "inferbatch.results",
    "Status": "inferbatch.results",
    "simulated": "inferbatch.simulator",
    **{
        name: "inferbatch.errors"
        for name in __all__
        if name.endswith(("Error", "Stop", "Failed", "Failures", "Exceeded", "Reached", "Interrupted"))
    },
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("inferbatch")
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'inferbatch' has no attribute {name!r}")
