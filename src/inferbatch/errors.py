"""The exception tree of inferbatch, with each run-ending error's exit code as data.

    InferbatchError                 exit_code
    ├── ConfigError                 2   bad configuration, missing URL/key/model, bad option value
    ├── InputError                  2   the input file cannot be read at all
    ├── CheckpointError             2   checkpoint belongs to another input/options, another run holds it, or
    │                                   its storage cannot be reached
    ├── OutputError                 2   the output cannot be written (finished rows stay in the checkpoint)
    ├── SafetyStop                  3   the run stopped itself; resumable, needs a person
    │   ├── AuthFailed              3   401, or a JSON 403 authorization_error
    │   ├── TooManyFailures         3   --abort-after consecutive failed rows
    │   ├── BudgetExceeded          3   --max-total-tokens / --max-cost
    │   ├── QuotaExhausted          3   the server says the quota/credit is gone, or asks for a wait over --max-wait
    │   └── StructuredOutputRefused 3   a 400 refusing the run's response_format (use --schema-mode prompt)
    ├── DeadlineReached             75  --deadline: stopped early, the next run continues
    └── Interrupted                 130 / 143  SIGINT / SIGTERM, checkpointed

Per-request failures never end the run by themselves; the client raises them and the
retry loop consumes them:

    RequestFailed                   one attempt failed
    ├── Retryable                   connection error, timeout, 408/409/425/429/5xx, malformed 200
    └── Fatal                       400, 404, 422, other 4xx: the row ends as `error`
        ├── AuthRejected            401, or a JSON 403: the key may not do this; stops the run
        └── QuotaRejected           quota/credit/billing exhausted, or a wait longer than --max-wait; stops the run

Only ``cli.py`` turns an ``InferbatchError`` into an exit code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class InferbatchError(Exception):
    """Base of every error that ends a run; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(InferbatchError):
    """A setting, flag or job file that cannot run (not click's UsageError: this one is the library's)."""

    exit_code = 2


class InputError(InferbatchError):
    exit_code = 2


class CheckpointError(InferbatchError):
    exit_code = 2


class OutputError(InferbatchError):
    exit_code = 2


class SafetyStop(InferbatchError):
    exit_code = 3


class AuthFailed(SafetyStop):
    pass


class TooManyFailures(SafetyStop):
    pass


class BudgetExceeded(SafetyStop):
    pass


class QuotaExhausted(SafetyStop):
    pass


class StructuredOutputRefused(SafetyStop):
    """The server answers 400 to the response_format the run sends: every row would fail the same way."""


class DeadlineReached(InferbatchError):
    exit_code = 75


class Interrupted(InferbatchError):
    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(f"interrupted by {signal_name}; finished rows are checkpointed, rerun to continue")
        self.exit_code = exit_code


class RequestFailed(Exception):
    """One attempt failed. ``status`` is the HTTP status, or None when no response arrived."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        latency_ms: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.body = body
        self.headers = headers
        self.latency_ms = latency_ms
        self.request_id = request_id  # x-request-id, else the body's id; redacted by the client
        # body: the error response's JSON object (redacted), None if it had none; headers: the response's


class Retryable(RequestFailed):
    pass


class Fatal(RequestFailed):
    pass


class AuthRejected(Fatal):
    pass


class QuotaRejected(Fatal):
    """ "Come back later" rather than "slow down": the message says which limit and when it resets."""
