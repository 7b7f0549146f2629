"""inferbatch: run large batches of chat completions against OpenAI-compatible APIs, safely and fast."""

from __future__ import annotations

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `inferbatch --help` does not pay for importing aiohttp and pyarrow.
    if name == "__version__":
        from importlib.metadata import version

        return version("inferbatch")
    raise AttributeError(f"module 'inferbatch' has no attribute {name!r}")
