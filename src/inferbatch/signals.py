"""SIGTERM and SIGINT as events on the running event loop (Heroku sends SIGTERM, then SIGKILL 30 s later)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


@contextlib.asynccontextmanager
async def signal_handlers(
    on_signal: Callable[[signal.Signals, int], None], enabled: bool = True
) -> AsyncIterator[None]:
    """Call ``on_signal(sig, exit_code)`` for SIGTERM/SIGINT while inside; restore the defaults after."""
    loop = asyncio.get_running_loop()
    installed = []
    if enabled:
        for sig, code in EXIT_CODES.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal, sig, code)
                installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
