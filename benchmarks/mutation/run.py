#!/usr/bin/env python3
"""Mutation testing for the modules that carry inferbatch's promises (issue 16, "Keep a mutation score").

Mutants are generated mechanically from the AST of each target module (operators below, details in
README.md beside this file). Each mutant is written into a private copy of the repository, and the
test files mapped to that module run against it with ``pytest -x``; a failing run kills the mutant.
Each worker runs pytest with an interpreter of its own (a small venv) whose path starts with the copy's
``src``, so tests that start ``sys.executable -m inferbatch`` import the mutated code too, whatever env
they pass. Not part of the test suite or CI: run it by hand.

    .venv/bin/python benchmarks/mutation/run.py --module budget,retry -j 1
    .venv/bin/python benchmarks/mutation/run.py                     # every default module, -j 2
    .venv/bin/python benchmarks/mutation/run.py --list --module runner
    .venv/bin/python benchmarks/mutation/run.py --only-survivors benchmarks/mutation/results/latest.json
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime as _dt
import difflib
import fnmatch
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "src/inferbatch"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# ---------------------------------------------------------------------------------------------------------------
# What is mutated. None = the whole module; a list = only those functions/methods (by name, at any depth; nested
# functions inside them included). Names are resolved at run time; names that no longer exist are reported.
# The runner's own record path (the row's trip itself is dispatch.py, recording.py and completion.py, whole).
RUNNER_FUNCTIONS = [
    "_finish",
    "_worker",
    "_feed",
    "_record",
    "request_stop",
]
TARGETS: dict[str, list[str] | None] = {
    "checkpoint.py": None,
    "checkpoint_s3.py": None,
    "retry.py": None,
    "client.py": None,
    "limits.py": None,
    "budget.py": None,
    "results.py": None,
    "runner.py": RUNNER_FUNCTIONS,
    "dispatch.py": None,
    "recording.py": None,
    "completion.py": None,
    "window.py": None,
    "bits.py": None,
    "structured.py": None,
    "judging.py": None,
}
# Run when --module is not given (checkpoint_s3 is optional: its tests start a moto server and are slow).
DEFAULT_MODULES = [
    "checkpoint.py",
    "retry.py",
    "client.py",
    "limits.py",
    "budget.py",
    "results.py",
    "runner.py",
    "dispatch.py",
    "recording.py",
    "completion.py",
    "window.py",
    "bits.py",
    "structured.py",
    "judging.py",
]

# Which test files run against a module's mutants, in this order (pytest -x stops at the first failure, so cheap
# and precise files go first; a survivor costs the whole list). Found with grep: the files that import the module,
# plus the files that drive `inferbatch run` through the path the module sits on (`--discover` prints the grep
# view to compare with). Files that do not exist (yet, or at --tests-from REV) are skipped with a note.
TEST_MAP: dict[str, list[str]] = {
    "judging.py": ["tests/test_judging_units.py", "tests/test_judge.py", "tests/test_report_html_judge.py"],
    "checkpoint.py": [
        "tests/test_checkpoint_mutants.py",
        "tests/test_checkpoint_units.py",
        "tests/test_judging_units.py",
        "tests/test_completion.py",
        "tests/test_budget.py",
        "tests/test_stops.py",
        "tests/test_safety.py",
        "tests/test_bad_settings.py",
        "tests/test_checkpoint_durability.py",
        "tests/test_cli_run.py",
        "tests/test_resume.py",
        "tests/test_worker.py",
        "tests/test_deadline.py",
        "tests/test_torture.py",
    ],
    "checkpoint_s3.py": ["tests/test_s3.py"],
    "retry.py": [
        "tests/test_retry.py",
        "tests/test_client.py",
        "tests/test_adversarial_http.py",
        "tests/test_stops.py",
        "tests/test_safety.py",
        "tests/test_cli_run.py",
        "tests/test_ratelimit_e2e.py",
    ],
    "client.py": [
        "tests/test_client_mutants.py",
        "tests/test_client.py",
        "tests/test_adversarial_http.py",
        "tests/test_retry.py",
        "tests/test_stops.py",
        "tests/test_safety.py",
        "tests/test_bad_settings.py",
        "tests/test_cli_run.py",
        "tests/test_ratelimit_e2e.py",
    ],
    "limits.py": [
        "tests/test_limits_mutants.py",
        "tests/test_limits.py",
        "tests/test_cli_run.py",
        "tests/test_ratelimit_e2e.py",
    ],
    "budget.py": ["tests/test_budget.py", "tests/test_library.py", "tests/test_cli_run.py"],
    "results.py": [
        "tests/test_results_mutants.py",
        "tests/test_results_units.py",
        "tests/test_openai_batch_readback.py",
        "tests/test_report_html.py",
        "tests/test_cli_validate_report.py",
        "tests/test_completion.py",
        "tests/test_cli_run.py",
        "tests/test_evaluation.py",
        "tests/test_resume.py",
        "tests/test_checkpoint_durability.py",
        "tests/test_side_outputs.py",
    ],
    "dispatch.py": [
        "tests/test_dispatch.py",
        "tests/test_budget.py",
        "tests/test_safety.py",
        "tests/test_stops.py",
        "tests/test_structured.py",
        "tests/test_cache_failures.py",
        "tests/test_cli_run.py",
        "tests/test_resume.py",
    ],
    "recording.py": [
        "tests/test_recording_completion_mutants.py",
        "tests/test_judging_units.py",
        "tests/test_judge.py",
        "tests/test_progress.py",
        "tests/test_evaluation.py",
        "tests/test_safety.py",
        "tests/test_cli_run.py",
        "tests/test_resume.py",
    ],
    "completion.py": [
        "tests/test_recording_completion_mutants.py",
        "tests/test_completion.py",
        "tests/test_judge.py",
        "tests/test_side_outputs.py",
        "tests/test_resume.py",
        "tests/test_cli_run.py",
        "tests/test_s3.py",
    ],
    "window.py": ["tests/test_window.py", "tests/test_limits.py", "tests/test_simulator.py"],
    "bits.py": ["tests/test_checkpoint_units.py", "tests/test_resume.py", "tests/test_evaluation.py"],
    "structured.py": ["tests/test_structured.py", "tests/test_schema_fastpath.py", "tests/test_evaluation.py"],
    "runner.py": [
        "tests/test_runner_mutants.py",
        "tests/test_judge.py",
        "tests/test_completion.py",
        "tests/test_budget.py",
        "tests/test_stops.py",
        "tests/test_safety.py",
        "tests/test_bad_settings.py",
        "tests/test_library.py",
        "tests/test_progress.py",
        "tests/test_checkpoint_durability.py",
        "tests/test_cli_run.py",
        "tests/test_resume.py",
        "tests/test_worker.py",
        "tests/test_ratelimit_e2e.py",
        "tests/test_deadline.py",
        "tests/test_torture.py",
    ],
}
# Modules whose code runs under `inferbatch run` (for --discover: a test file driving the CLI's run exercises them).
RUN_PATH_MODULES = {"checkpoint.py", "retry.py", "client.py", "limits.py", "budget.py", "results.py", "runner.py"}

SKIP_FUNCTIONS = {"__repr__"}  # never mutated (nor anything nested in them)
LOG_RECEIVERS = {"log", "logger", "logging", "_log", "_logger", "LOG", "LOGGER"}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
LOG_DELETABLE = {"warning", "warn", "error", "exception", "critical"}  # user-visible on stderr: deleting them counts
PRAGMA = "pragma: no mutate"

CMP_SWAPS = {
    ast.Eq: ("!=", "cmp_eq_ne"),
    ast.NotEq: ("==", "cmp_ne_eq"),
    ast.Lt: ("<=", "cmp_lt_le"),
    ast.LtE: ("<", "cmp_le_lt"),
    ast.Gt: (">=", "cmp_gt_ge"),
    ast.GtE: (">", "cmp_ge_gt"),
    ast.In: ("not in", "cmp_in_notin"),
    ast.NotIn: ("in", "cmp_notin_in"),
    ast.Is: ("is not", "cmp_is_isnot"),
    ast.IsNot: ("is", "cmp_isnot_is"),
}
CMP_TOKEN = {
    ast.Eq: r"==",
    ast.NotEq: r"!=",
    ast.Lt: r"<(?!=)",
    ast.LtE: r"<=",
    ast.Gt: r">(?!=)",
    ast.GtE: r">=",
    ast.In: r"\bin\b",
    ast.NotIn: r"\bnot\s+in\b",
    ast.Is: r"\bis\b",
    ast.IsNot: r"\bis\s+not\b",
}

OPERATORS = """\
cmp_eq_ne / cmp_ne_eq        ==  <-> !=
cmp_lt_le / cmp_le_lt        <   <-> <=
cmp_gt_ge / cmp_ge_gt        >   <-> >=
cmp_in_notin / cmp_notin_in  in  <-> not in
cmp_is_isnot / cmp_isnot_is  is  <-> is not
bool_and_or / bool_or_and    and <-> or (every and/or of one boolean expression)
not_drop                     not x -> x
int_N_M                      integer literal N -> N+1 (0 -> 1); bools are not integers here
const_true_false / _false_true  True <-> False
bin_add_sub / bin_sub_add    a + b <-> a - b (not when an operand is a str/bytes/list/tuple/f-string literal)
aug_add_sub / aug_sub_add    += <-> -=
call_pass                    a statement that is a bare call (or await of one) -> pass
return_none                  return X -> return None (X not None and not False)
break_continue / continue_break
"""


# ---------------------------------------------------------------------------------------------------------------
# Mutant generation


@dataclasses.dataclass
class Mutant:
    id: str
    module: str
    qualname: str
    line: int
    op: str
    start: int  # character offsets into the module's source
    end: int
    replacement: str
    old: str  # the source line(s) touched, whitespace collapsed
    new: str

    def apply(self, source: str) -> str:
        return source[: self.start] + self.replacement + source[self.end :]


def _collapse(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_log_call(node: ast.AST) -> str | None:
    """`log.warning(...)` / `logging.info(...)` -> the method name; else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOG_METHODS:
        receiver = node.func.value
        if isinstance(receiver, ast.Name) and receiver.id in LOG_RECEIVERS:
            return node.func.attr
        if isinstance(receiver, ast.Attribute) and receiver.attr in LOG_RECEIVERS:  # self.log.warning(...)
            return node.func.attr
    return None


def _is_message_format(node: ast.AST) -> bool:
    """`"..." % args` or `"...".format(...)`: message text, never mutated."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return isinstance(node.left, (ast.Constant, ast.JoinedStr)) and not isinstance(
            getattr(node.left, "value", ""), (int, float)
        )
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)
    return False


_NON_NUMERIC = (ast.JoinedStr, ast.List, ast.Tuple, ast.ListComp, ast.Dict, ast.Set, ast.SetComp, ast.DictComp)


def _non_numeric(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (str, bytes))
    return isinstance(node, _NON_NUMERIC)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_main_guard(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


class Finder:
    """Walks one module's AST and collects mutants (only inside `functions` when given)."""

    def __init__(self, module: str, source: str, functions: list[str] | None) -> None:
        self.module = module
        self.source = source
        self.functions = set(functions) if functions is not None else None
        self.found: set[str] = set()
        self.mutants: list[Mutant] = []
        self.invalid: list[str] = []
        self._ids: Counter[str] = Counter()
        raw_lines = source.splitlines(keepends=True)
        self._line_bytes = [line.encode("utf-8") for line in raw_lines]
        self._line_start = [0]
        for line in raw_lines:
            self._line_start.append(self._line_start[-1] + len(line))
        self._pragma = {i + 1 for i, line in enumerate(raw_lines) if PRAGMA in line}

    # positions -------------------------------------------------------------------------------------------------
    def pos(self, lineno: int, col: int) -> int:
        return self._line_start[lineno - 1] + len(self._line_bytes[lineno - 1][:col].decode("utf-8", "replace"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.pos(node.lineno, node.col_offset), self.pos(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined, arg-type]

    def line_of(self, offset: int) -> int:
        lo, hi = 0, len(self._line_start) - 1
        while lo < hi:  # last line start <= offset
            mid = (lo + hi + 1) // 2
            if self._line_start[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    def token_in_gap(self, a: int, b: int, pattern: str) -> tuple[int, int] | None:
        gap = self.source[a:b]
        clean = re.sub(r"#[^\n]*", lambda m: " " * len(m.group()), gap)
        match = re.search(pattern, clean)
        return (a + match.start(), a + match.end()) if match else None

    # recording -------------------------------------------------------------------------------------------------
    def add(self, scope: list[str], op: str, start: int, end: int, replacement: str) -> None:
        line = self.line_of(start)
        if line in self._pragma:
            return
        qual = ".".join(scope) or "<module>"
        base = f"{self.module}:{qual}:L{line}:{op}"
        self._ids[base] += 1
        mutant_id = base if self._ids[base] == 1 else f"{base}#{self._ids[base]}"
        first = self._line_start[line - 1]
        last_line = self.line_of(max(start, end - 1)) if end > start else line
        stop = self._line_start[last_line] if last_line < len(self._line_start) - 1 else len(self.source)
        old = self.source[first:stop]
        new = self.source[first:start] + replacement + self.source[end:stop]
        mutant = Mutant(mutant_id, self.module, qual, line, op, start, end, replacement, _collapse(old), _collapse(new))
        try:
            compile(mutant.apply(self.source), self.module, "exec", dont_inherit=True)
        except SyntaxError as exc:
            self.invalid.append(f"{mutant_id}: {exc.msg}")
            return
        self.mutants.append(mutant)

    # walking ---------------------------------------------------------------------------------------------------
    def run(self) -> list[Mutant]:
        tree = ast.parse(self.source)
        body = tree.body[1:] if tree.body and _is_docstring(tree.body[0]) else tree.body
        for stmt in body:
            self.visit(stmt, [], self.functions is None)
        return self.mutants

    def visit(self, node: ast.AST, scope: list[str], active: bool) -> None:  # noqa: C901 - one dispatch
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name in SKIP_FUNCTIONS:
                return
            inner = [*scope, node.name]
            chosen = self.functions is not None and node.name in self.functions
            if chosen:
                self.found.add(node.name)
            on = active or chosen
            for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
                self.visit(default, inner, on)  # decorators and annotations are declarations: skipped
            body = node.body[1:] if node.body and _is_docstring(node.body[0]) else node.body
            for stmt in body:
                self.visit(stmt, inner, on)
            return
        if isinstance(node, ast.ClassDef):
            inner = [*scope, node.name]
            body = node.body[1:] if node.body and _is_docstring(node.body[0]) else node.body
            for stmt in body:
                self.visit(stmt, inner, active)
            return
        if isinstance(node, ast.If) and (_is_type_checking(node.test) or _is_main_guard(node.test)):
            return
        if isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.visit(node.value, scope, active)
            return
        if isinstance(node, ast.JoinedStr) or _is_message_format(node):
            return
        if isinstance(node, ast.Call) and _is_log_call(node):
            return
        if active:
            self.mutate(node, scope)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.expr_context, ast.operator, ast.cmpop, ast.boolop, ast.unaryop)):
                continue
            self.visit(child, scope, active)

    def mutate(self, node: ast.AST, scope: list[str]) -> None:  # noqa: C901 - one case per operator
        if isinstance(node, ast.Compare):
            left: ast.expr = node.left
            for cmpop, right in zip(node.ops, node.comparators, strict=True):
                swap = CMP_SWAPS.get(type(cmpop))
                if swap is not None:
                    token = self.token_in_gap(self.span(left)[1], self.span(right)[0], CMP_TOKEN[type(cmpop)])
                    if token:
                        self.add(scope, swap[1], token[0], token[1], swap[0])
                left = right
        elif isinstance(node, ast.BoolOp):
            word, new, op = (
                ("and", "or", "bool_and_or") if isinstance(node.op, ast.And) else ("or", "and", "bool_or_and")
            )
            tokens = []
            for a, b in zip(node.values, node.values[1:]):
                token = self.token_in_gap(self.span(a)[1], self.span(b)[0], rf"\b{word}\b")
                if token is None:
                    return
                tokens.append(token)
            # one mutant flips every and/or of the expression: rebuild the text between the first and last token
            start, end = tokens[0][0], tokens[-1][1]
            pieces, cursor = [], start
            for a, b in tokens:
                pieces.append(self.source[cursor:a])
                pieces.append(new)
                cursor = b
            self.add(scope, op, start, end, "".join(pieces))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            start, _ = self.span(node)
            operand_start, _ = self.span(node.operand)
            token = self.token_in_gap(start, operand_start, r"\bnot\b\s*")
            if token:
                self.add(scope, "not_drop", token[0], token[1], "")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                start, end = self.span(node)
                if node.value:
                    self.add(scope, "const_true_false", start, end, "False")
                else:
                    self.add(scope, "const_false_true", start, end, "True")
            elif isinstance(node.value, int):
                start, end = self.span(node)
                self.add(scope, f"int_{node.value}_{node.value + 1}", start, end, str(node.value + 1))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            if _non_numeric(node.left) or _non_numeric(node.right):
                return
            add = isinstance(node.op, ast.Add)
            token = self.token_in_gap(self.span(node.left)[1], self.span(node.right)[0], r"\+" if add else r"-")
            if token:
                self.add(scope, "bin_add_sub" if add else "bin_sub_add", token[0], token[1], "-" if add else "+")
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Add, ast.Sub)):
            if _non_numeric(node.value):
                return
            add = isinstance(node.op, ast.Add)
            token = self.token_in_gap(self.span(node.target)[1], self.span(node.value)[0], r"\+=" if add else r"-=")
            if token:
                self.add(scope, "aug_add_sub" if add else "aug_sub_add", token[0], token[1], "-=" if add else "+=")
        elif isinstance(node, ast.Expr):
            call = node.value.value if isinstance(node.value, ast.Await) else node.value
            if isinstance(call, ast.Call):
                level = _is_log_call(call)
                if level is None or level in LOG_DELETABLE:
                    start, end = self.span(node)
                    self.add(scope, "call_pass", start, end, "pass")
        elif isinstance(node, ast.Return) and node.value is not None:
            value = node.value
            if not (isinstance(value, ast.Constant) and (value.value is None or value.value is False)):
                start, end = self.span(value)
                self.add(scope, "return_none", start, end, "None")
        elif isinstance(node, ast.Break):
            start, end = self.span(node)
            self.add(scope, "break_continue", start, end, "continue")
        elif isinstance(node, ast.Continue):
            start, end = self.span(node)
            self.add(scope, "continue_break", start, end, "break")


def generate(module: str, source: str, functions: list[str] | None) -> tuple[list[Mutant], list[str], list[str]]:
    """-> (mutants, function names asked for but not found, mutants dropped as invalid syntax)."""
    finder = Finder(module, source, functions)
    mutants = finder.run()
    missing = sorted(set(functions or []) - finder.found)
    return mutants, missing, finder.invalid


# ---------------------------------------------------------------------------------------------------------------
# Sources: the working tree or a git revision


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def git_bytes(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True).stdout


def read_module(module: str, rev: str | None) -> str | None:
    path = f"{PACKAGE}/{module}"
    if rev:
        try:
            return git_bytes("show", f"{rev}:{path}").decode("utf-8")
        except subprocess.CalledProcessError:
            return None
    file = REPO / path
    return file.read_text(encoding="utf-8") if file.exists() else None


def describe_source(rev: str | None) -> str:
    if rev:
        return f"{rev} ({git('rev-parse', '--short', rev).strip()})"
    head = git("rev-parse", "--short", "HEAD").strip()
    dirty = git("status", "--porcelain", "--", "src", "tests").strip()
    return f"working tree (HEAD {head}{' + uncommitted changes' if dirty else ''})"


def normalize_module(name: str) -> str:
    name = name.strip().rsplit("/", 1)[-1]
    return name if name.endswith(".py") else name + ".py"


# ---------------------------------------------------------------------------------------------------------------
# Workspaces: one private copy of the repository per worker


def _ours(root: int) -> list[int]:
    """Processes started by the pytest `root` (started with start_new_session, so its pid is a session id):
    its descendants by parent pid, and members of its session that were orphaned (their parent is gone)."""
    children: dict[int, list[int]] = defaultdict(list)
    session: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().decode("utf-8", "replace").rsplit(")", 1)[1].split()
            ppid, sid = int(fields[1]), int(fields[3])
        except (OSError, ValueError, IndexError):
            continue
        children[ppid].append(int(entry))
        if sid == root:
            session.append(int(entry))
    found, stack = set(session), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    found.discard(os.getpid())
    return sorted(found)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill the pytest we started and every process it started, each by its pid."""
    for pid in _ours(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@dataclasses.dataclass
class PytestRun:
    status: str  # passed / failed / error / timeout / stopped
    returncode: int | None
    seconds: float
    output: str
    failures: list[str]  # "FAILED nodeid" / "ERROR nodeid" lines


SUMMARY_LINE = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


class Workspace:
    """One copy of the repository, and (isolation "venv") an interpreter of its own whose sys.path puts the copy's
    src first: tests run `sys.executable -m inferbatch` with their own env (tests/test_deadline.py passes only
    PATH), so PYTHONPATH alone does not reach every child process."""

    def __init__(self, root: Path, index: int, python: str, isolation: str) -> None:
        self.index = index
        self.dir = root / f"w{index}"
        self.basetemp = root / f"pytest-tmp-{index}"
        self.python = python
        self.isolation = isolation
        self.env = dict(os.environ)
        self.env.pop("PYTEST_ADDOPTS", None)
        self.env.pop("PYTHONPATH", None)
        if isolation in ("venv", "pythonpath"):
            self.env["PYTHONPATH"] = str(self.dir / "src")
        if isolation == "venv":
            self.python = self._make_venv(root / f"venv{index}", python)
            self.env["PATH"] = f"{Path(self.python).parent}{os.pathsep}{self.env.get('PATH', '')}"
            self.env["VIRTUAL_ENV"] = str(root / f"venv{index}")

    def _make_venv(self, venv: Path, python: str) -> str:
        """A venv (no pip) whose site-packages reads: the copy's src, then the project venv's site-packages (its
        dependencies; its editable-install path to the real src comes after the copy's, so it loses)."""
        subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
        new_python = str(venv / "bin" / "python")
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        theirs = subprocess.run([python, "-c", purelib], check=True, capture_output=True, text=True).stdout.strip()
        mine = Path(
            subprocess.run([new_python, "-c", purelib], check=True, capture_output=True, text=True).stdout.strip()
        )
        mine.mkdir(parents=True, exist_ok=True)
        (mine / "00_mutation_copy.pth").write_text(str(self.dir / "src") + "\n", encoding="utf-8")
        (mine / "01_project_venv.pth").write_text(f"import site; site.addsitedir({theirs!r})\n", encoding="utf-8")
        script = venv / "bin" / "inferbatch"  # the console script, for tests that run `inferbatch` from PATH
        script.write_text(
            f"#!{new_python}\nimport sys\nfrom inferbatch.cli import main\nsys.exit(main())\n", encoding="utf-8"
        )
        script.chmod(0o755)
        return new_python
        self.current: subprocess.Popen[bytes] | None = None
        self.originals: dict[str, str] = {}

    def module_path(self, module: str) -> Path:
        return self.dir / PACKAGE / module

    def _drop_bytecode(self, module: str) -> None:
        # A mutant of the same size written within the same second would otherwise reuse a stale .pyc.
        cache = self.module_path(module).parent / "__pycache__"
        for pyc in cache.glob(module[:-3] + ".*.pyc"):
            pyc.unlink(missing_ok=True)

    def write(self, module: str, text: str) -> None:
        self.module_path(module).write_text(text, encoding="utf-8")
        self._drop_bytecode(module)

    def apply(self, mutant: Mutant) -> None:
        self.write(mutant.module, mutant.apply(self.originals[mutant.module]))

    def restore(self, module: str) -> None:
        self.write(module, self.originals[module])

    def check_isolation(self) -> dict[str, str]:
        """Where a child `sys.executable` imports inferbatch from: with the worker's env, and with an env of PATH
        only (as tests/test_deadline.py starts it)."""
        found = {}
        for name, env in (("worker env", self.env), ("PATH-only env", {"PATH": "/usr/bin:/bin"})):
            done = subprocess.run(
                [self.python, "-c", "import inferbatch; print(inferbatch.__file__)"],
                env=env,
                cwd=tempfile.gettempdir(),
                capture_output=True,
                text=True,
                timeout=120,
            )
            found[name] = done.stdout.strip() or done.stderr.strip()
        return found

    def pytest(
        self, tests: list[str], deselect: list[str], timeout: float, *, stop_first: bool, stop: threading.Event
    ) -> PytestRun:
        cmd = [self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={self.basetemp}"]
        if stop_first:
            cmd.append("-x")
        for nodeid in deselect:
            cmd += ["--deselect", nodeid]
        cmd += tests
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=self.dir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.current = proc
        try:
            out, _ = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(proc)
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                out = b""
        finally:
            self.current = None
        _kill_tree(proc)  # whatever a test left running
        seconds = time.monotonic() - started
        text = out.decode("utf-8", "replace")
        failures = [f"{m.group(1)} {m.group(2)}" for m in SUMMARY_LINE.finditer(text)]
        if stop.is_set():
            status = "stopped"
        elif timed_out:
            status = "timeout"
        elif proc.returncode == 0:
            status = "passed"
        elif proc.returncode in (1, 2) or proc.returncode < 0:
            status = "failed"  # 1: tests failed; 2: interrupted/collection error (e.g. the mutant breaks an import)
        else:
            status = "error"  # 3 internal error, 4 usage error, 5 no tests collected
        return PytestRun(status, proc.returncode, seconds, text, failures)

    def interrupt(self) -> None:
        proc = self.current
        if proc is not None:
            _kill_tree(proc)


def build_workspaces(
    root: Path,
    count: int,
    python: str,
    isolation: str,
    src_rev: str | None,
    tests_rev: str | None,
    snapshot: dict[str, str],
) -> list[Workspace]:
    base = root / "w0"
    files = [f for f in git("ls-files", "-co", "--exclude-standard", "-z").split("\0") if f]
    for rel in files:
        if rel.startswith("benchmarks/mutation/results/"):
            continue
        src = REPO / rel
        if not src.is_file():
            continue  # deleted in the working tree
        dest = base / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    for rev, folder in ((src_rev, "src"), (tests_rev, "tests")):
        if rev:
            shutil.rmtree(base / folder, ignore_errors=True)
            for rel in git("ls-tree", "-r", "--name-only", "-z", rev, "--", folder).split("\0"):
                if rel:
                    dest = base / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(git_bytes("show", f"{rev}:{rel}"))
    for module, text in snapshot.items():  # exactly the text the mutants were generated from
        (base / PACKAGE / module).write_text(text, encoding="utf-8")
    for cache in base.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    for i in range(1, count):
        shutil.copytree(base, root / f"w{i}", symlinks=True)
    spaces = [Workspace(root, i, python, isolation) for i in range(count)]
    for space in spaces:
        space.originals = dict(snapshot)
    return spaces


# ---------------------------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class ModulePlan:
    module: str
    tests: list[str]
    missing_tests: list[str]
    deselect: list[str] = dataclasses.field(default_factory=list)
    dropped_files: list[str] = dataclasses.field(default_factory=list)
    baseline_seconds: float | None = None
    baseline_ok: bool = False
    baseline_note: str = ""
    timeout: float = 0.0


class Results:
    """Everything for the JSON file; written after every mutant so an interrupted run keeps what it did."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.modules: dict[str, dict[str, Any]] = {}
        self.mutants: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.mutants.append(record)
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {**self.meta, "modules": self.modules, "mutants": self.mutants}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def run_pool(spaces: list[Workspace], jobs: list[Any], handle: Any, stop: threading.Event) -> None:
    """Each workspace takes jobs from one queue; `handle(space, job)` runs one."""
    work: queue.Queue[Any] = queue.Queue()
    for job in jobs:
        work.put(job)

    def loop(space: Workspace) -> None:
        while not stop.is_set():
            try:
                job = work.get_nowait()
            except queue.Empty:
                return
            try:
                handle(space, job)
            except Exception as exc:  # a harness bug must not leave a mutant in place or kill the run silently
                print(f"[w{space.index}] harness error on {job!r}: {exc!r}", file=sys.stderr)

    threads = [threading.Thread(target=loop, args=(space,), daemon=True) for space in spaces]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.5)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the workers (results so far are kept)", file=sys.stderr)
        stop.set()
        for space in spaces:
            space.interrupt()
        for thread in threads:
            thread.join(timeout=60)
        raise


def run_baselines(
    spaces: list[Workspace], plans: dict[str, ModulePlan], args: argparse.Namespace, stop: threading.Event
) -> None:
    """Run each module's tests once with no mutant. Tests failing already are deselected (a mutant would get the
    credit otherwise); a test file that cannot even be collected is dropped. Identical test lists share a run."""
    groups: dict[tuple[str, ...], list[ModulePlan]] = defaultdict(list)
    for plan in plans.values():
        groups[tuple(plan.tests)].append(plan)

    def handle(space: Workspace, key: tuple[str, ...]) -> None:
        tests, deselect, dropped = list(key), [], []
        note = ""
        for attempt in range(3):
            if not tests:
                note = "no test file left"
                break
            run = space.pytest(tests, deselect, args.baseline_timeout, stop_first=False, stop=stop)
            if run.status == "passed":
                for plan in groups[key]:
                    plan.baseline_seconds, plan.baseline_ok = run.seconds, True
                break
            if run.status in ("timeout", "stopped"):
                note = f"baseline {run.status} after {run.seconds:.0f}s"
                break
            new = 0
            for failure in run.failures:
                kind, nodeid = failure.split(" ", 1)
                if "::" in nodeid:
                    if nodeid not in deselect:
                        deselect.append(nodeid)
                        new += 1
                elif nodeid in tests:  # a whole file failed to collect
                    tests.remove(nodeid)
                    dropped.append(nodeid)
                    new += 1
            if not new:
                note = f"baseline fails (exit {run.returncode}) with nothing to deselect:\n{run.output[-2000:]}"
                break
            print(
                f"  baseline {','.join(p.module for p in groups[key])}: try {attempt + 1} failed; "
                f"deselecting {len(deselect)} test(s), dropping {len(dropped)} file(s)",
                file=sys.stderr,
            )
        for plan in groups[key]:
            plan.tests, plan.deselect, plan.dropped_files, plan.baseline_note = tests, deselect, dropped, note
            if plan.baseline_ok:
                plan.timeout = args.timeout or max(args.min_timeout, plan.baseline_seconds * args.timeout_factor)  # type: ignore[operator]
        state = "green" if groups[key][0].baseline_ok else "FAILED"
        seconds = groups[key][0].baseline_seconds
        print(
            f"[w{space.index}] baseline {','.join(p.module for p in groups[key])}: {state}"
            f"{f' in {seconds:.1f}s' if seconds else ''}"
            f"{f' ({len(deselect)} deselected)' if deselect else ''}",
            file=sys.stderr,
        )

    run_pool(spaces, list(groups), handle, stop)


def run_mutants(
    spaces: list[Workspace],
    mutants: list[Mutant],
    plans: dict[str, ModulePlan],
    results: Results,
    stop: threading.Event,
) -> None:
    total = len(mutants)
    done = Counter()  # type: ignore[var-annotated]
    lock = threading.Lock()
    started = time.monotonic()

    def handle(space: Workspace, mutant: Mutant) -> None:
        plan = plans[mutant.module]
        space.apply(mutant)
        try:
            run = space.pytest(plan.tests, plan.deselect, plan.timeout, stop_first=True, stop=stop)
        finally:
            space.restore(mutant.module)
        if run.status == "stopped":
            return
        status = {"passed": "survived", "failed": "killed", "timeout": "timeout", "error": "error"}[run.status]
        killed_by = run.failures[0] if run.failures else None
        record = {
            **dataclasses.asdict(mutant),
            "status": status,
            "seconds": round(run.seconds, 2),
            "returncode": run.returncode,
            "killed_by": killed_by,
        }
        if status == "error" or (status == "killed" and not killed_by):
            record["output_tail"] = run.output[-1500:]
        results.add(record)
        with lock:
            done[status] += 1
            n = sum(done.values())
            elapsed = time.monotonic() - started
            eta = elapsed / n * (total - n)
            print(
                f"[{n}/{total} w{space.index} {elapsed / 60:.1f}m, ~{eta / 60:.0f}m left] {status:8} "
                f"{mutant.id} ({run.seconds:.1f}s){f'  <- {killed_by}' if killed_by and status == 'killed' else ''}",
                file=sys.stderr,
            )

    run_pool(spaces, mutants, handle, stop)


# ---------------------------------------------------------------------------------------------------------------
# Report


def score_table(records: list[dict[str, Any]], modules: list[str]) -> list[str]:
    lines = [
        "| module | mutants | killed | timed out | survived | errors | score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    totals = Counter()  # type: ignore[var-annotated]
    for module in modules:
        counts = Counter(r["status"] for r in records if r["module"] == module)
        totals.update(counts)
        lines.append(_row(module, counts))
    if len(modules) > 1:
        lines.append(_row("**total**", totals))
    return lines


def _row(name: str, counts: Counter) -> str:  # type: ignore[type-arg]
    killed, timeout, survived, errors = counts["killed"], counts["timeout"], counts["survived"], counts["error"]
    judged = killed + timeout + survived
    score = f"{100 * (killed + timeout) / judged:.1f} %" if judged else "–"
    return f"| {name} | {judged + errors} | {killed} | {timeout} | {survived} | {errors} | {score} |"


def report(results: Results, plans: dict[str, ModulePlan], elapsed: float) -> str:
    meta = results.meta
    records = results.mutants
    modules = [m for m in plans if any(r["module"] == m for r in records)] or list(plans)
    out = [
        f"## Mutation score ({meta['started'][:16].replace('T', ' ')})",
        "",
        f"src: {meta['src']}; tests: {meta['tests']}; -j {meta['jobs']}; took {elapsed / 60:.1f} min ({elapsed:.0f} s)",
        "",
    ]
    out += score_table(records, modules)
    out += [
        "",
        "score = (killed + timed out) / (killed + timed out + survived); errors (pytest exit 3/4/5) are "
        "left out and listed below.",
        "",
    ]
    notes = []
    for plan in plans.values():
        bits = []
        if plan.missing_tests:
            bits.append("skipped (missing): " + ", ".join(plan.missing_tests))
        if plan.dropped_files:
            bits.append("dropped (not collectable without mutants): " + ", ".join(plan.dropped_files))
        if plan.deselect:
            bits.append("deselected (fail without mutants): " + ", ".join(plan.deselect))
        if not plan.baseline_ok:
            bits.append(
                "BASELINE NOT GREEN, no mutant run: " + plan.baseline_note.splitlines()[0]
                if plan.baseline_note
                else "BASELINE NOT GREEN, no mutant run"
            )
        if bits:
            notes.append(f"- {plan.module}: " + "; ".join(bits))
    if notes:
        out += ["### Test selection notes", "", *notes, ""]
    timeouts = [r for r in records if r["status"] == "timeout"]
    if timeouts:
        out += ["### Killed by timeout", "", *[f"- `{r['id']}`" for r in timeouts], ""]
    errors = [r for r in records if r["status"] == "error"]
    if errors:
        out += ["### Errors (not counted)", "", *[f"- `{r['id']}` (pytest exit {r['returncode']})" for r in errors], ""]
    survivors = [r for r in records if r["status"] == "survived"]
    out += [f"### Survivors ({len(survivors)})", ""]
    for module in modules:
        mine = [r for r in survivors if r["module"] == module]
        if not mine:
            continue
        out += [f"{module}:", "", "```diff"]
        for r in sorted(mine, key=lambda r: r["line"]):
            out += [f"# {r['id']}", f"- {r['old']}", f"+ {r['new']}"]
        out += ["```", ""]
    if not survivors:
        out.append("none")
        out.append("")
    killers = Counter(
        (r["module"], r["killed_by"].split(" ", 1)[1].split("::")[0])
        for r in records
        if r["status"] == "killed" and r.get("killed_by")
    )
    if killers:
        out += ["### First failing test file per killed mutant", "", "| module | test file | kills |", "|---|---|---:|"]
        for (module, test_file), n in sorted(killers.items(), key=lambda kv: (kv[0][0], -kv[1])):
            out.append(f"| {module} | {test_file} | {n} |")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Selection helpers


def select_previous_survivors(path: Path, mutants: list[Mutant]) -> tuple[list[Mutant], list[str]]:
    """Survivors of an earlier result file, matched by id, or (lines moved) by module, function, operator and the
    line's text."""
    previous = [r for r in json.loads(path.read_text(encoding="utf-8"))["mutants"] if r["status"] == "survived"]
    by_id = {m.id: m for m in mutants}
    by_text: dict[tuple[str, str, str, str], list[Mutant]] = defaultdict(list)
    for m in mutants:
        by_text[(m.module, m.qualname, m.op.split("#")[0], m.old)].append(m)
    chosen: list[Mutant] = []
    lost = []
    for r in previous:
        m = by_id.get(r["id"])
        if m is None:
            candidates = [
                c for c in by_text.get((r["module"], r["qualname"], r["op"], r["old"]), []) if c not in chosen
            ]
            m = candidates[0] if candidates else None
        if m is None:
            lost.append(r["id"])
        elif m not in chosen:
            chosen.append(m)
    return chosen, lost


def discover() -> None:
    """Print the grep view of which test files import or drive each module, next to TEST_MAP."""
    test_files = sorted((REPO / "tests").glob("test_*.py"))
    for module in TARGETS:
        stem = module[:-3]
        imports = re.compile(rf"inferbatch\.{stem}\b|from inferbatch import [^\n]*\b{stem}\b")
        drives = re.compile(r'\["run"|"inferbatch", "run"|run_process\(|run_batch\(')
        hits = []
        for file in test_files:
            text = file.read_text(encoding="utf-8")
            why = [
                w
                for w, ok in (
                    ("imports", imports.search(text)),
                    ("drives run", module in RUN_PATH_MODULES and drives.search(text)),
                )
                if ok
            ]
            if why:
                hits.append(f"tests/{file.name} ({', '.join(why)})")
        mapped = set(TEST_MAP.get(module, []))
        print(f"{module}:")
        for hit in hits:
            print(f"  {'  ' if hit.split(' ')[0] in mapped else '+ '}{hit}")
        for extra in sorted(mapped - {h.split(" ")[0] for h in hits}):
            print(f"  = {extra} (mapped; grep finds no import/run)")
    print("\n'+' = grep finds it but TEST_MAP does not run it; '=' = in TEST_MAP only.")


# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__,
        epilog="operators (id suffixes):\n" + OPERATORS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--module",
        "-m",
        action="append",
        default=[],
        help="module(s) to mutate, e.g. budget or budget.py,retry.py (default: {}; 'all' adds checkpoint_s3.py)".format(
            ", ".join(DEFAULT_MODULES)
        ),
    )
    p.add_argument("-j", "--jobs", type=int, default=2, help="parallel workers, one repository copy each (default 2)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        help="mutant id(s) or fnmatch patterns (comma-separated or repeated), e.g. 'budget.py:Budget.*'",
    )
    p.add_argument(
        "--only-survivors",
        metavar="RESULTS_JSON",
        type=Path,
        help="run only the mutants that survived in an earlier result file",
    )
    p.add_argument("--limit", type=int, help="run only the first N selected mutants")
    p.add_argument(
        "--functions",
        action="append",
        default=[],
        metavar="MODULE=NAME,NAME",
        help="mutate only these functions/methods of MODULE (overrides TARGETS), e.g. runner.py=_record",
    )
    p.add_argument(
        "--runner-functions", help=f"the runner.py functions to mutate (default: {','.join(RUNNER_FUNCTIONS)})"
    )
    p.add_argument(
        "--tests",
        action="append",
        default=[],
        help="test files / node ids to run instead of TEST_MAP (for every selected module)",
    )
    p.add_argument("--src-from", metavar="REV", help="take src/ from this git revision instead of the working tree")
    p.add_argument("--tests-from", metavar="REV", help="take tests/ from this git revision (a 'before' score)")
    p.add_argument("--timeout", type=float, help="per-mutant timeout in seconds (default: baseline x factor)")
    p.add_argument("--timeout-factor", type=float, default=3.0, help="per-mutant timeout = baseline time x this")
    p.add_argument("--min-timeout", type=float, default=60.0, help="per-mutant timeout floor in seconds")
    p.add_argument("--baseline-timeout", type=float, default=1800.0, help="timeout of each baseline run")
    p.add_argument(
        "--python",
        default=str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else sys.executable,
        help="interpreter for pytest (default: the repo's .venv)",
    )
    p.add_argument(
        "--json",
        type=Path,
        help="result file (default: benchmarks/mutation/results/mutation-STAMP.json,"
        " also copied to results/latest.json)",
    )
    p.add_argument("--markdown", type=Path, help="also write the report to this file")
    p.add_argument("--workdir", type=Path, help="where the repository copies go (default: a temp dir)")
    p.add_argument("--keep-workdir", action="store_true", help="do not delete the copies at the end")
    p.add_argument("--list", action="store_true", help="list the selected mutants and exit")
    p.add_argument("--show", metavar="ID", help="print one mutant as a unified diff and exit")
    p.add_argument("--discover", action="store_true", help="print grep's view of module -> test files and exit")
    p.add_argument(
        "--isolation",
        choices=["venv", "pythonpath", "none"],
        default="venv",
        help="how child processes are made to import the copy: 'venv' (default) a per-worker venv whose "
        "path starts with the copy's src, plus PYTHONPATH; 'pythonpath' only PYTHONPATH (misses "
        "tests that pass their own env); 'none' (debug) neither: subprocess tests import the real src",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - a CLI
    args = parse_args(argv)
    if args.discover:
        discover()
        return 0
    targets = dict(TARGETS)
    if args.runner_functions:
        targets["runner.py"] = [n.strip() for n in args.runner_functions.split(",") if n.strip()]
    for spec in args.functions:
        module, _, names = spec.partition("=")
        targets[normalize_module(module)] = [n.strip() for n in names.split(",") if n.strip()] or None

    wanted = [normalize_module(m) for spec in args.module for m in spec.split(",") if m.strip()]
    if "all.py" in wanted:
        wanted = [m for m in wanted if m != "all.py"] + [m for m in targets if m not in wanted]
    previous = None
    if args.only_survivors:
        previous = json.loads(args.only_survivors.read_text(encoding="utf-8"))
        if not wanted:
            wanted = sorted({r["module"] for r in previous["mutants"] if r["status"] == "survived"})
    modules = list(dict.fromkeys(wanted or DEFAULT_MODULES))
    for module in modules:
        if module not in targets:
            targets[module] = None  # any other module of the package: whole module
            print(f"note: {module} is not in TARGETS; mutating the whole module", file=sys.stderr)

    # Generate ---------------------------------------------------------------------------------------------------
    snapshot: dict[str, str] = {}
    mutants: list[Mutant] = []
    for module in modules:
        source = read_module(module, args.src_from)
        if source is None:
            print(
                f"warning: {PACKAGE}/{module} does not exist{f' at {args.src_from}' if args.src_from else ''}; skipped",
                file=sys.stderr,
            )
            continue
        snapshot[module] = source
        found, missing, invalid = generate(module, source, targets[module])
        for name in missing:
            print(f"warning: {module}: no function or method named {name!r} (renamed or removed?)", file=sys.stderr)
        for bad in invalid:
            print(f"note: dropped a mutant that does not compile: {bad}", file=sys.stderr)
        mutants += found
    modules = [m for m in modules if m in snapshot]

    if args.show:
        for mutant in mutants:
            if mutant.id == args.show:
                before = snapshot[mutant.module].splitlines(keepends=True)
                after = mutant.apply(snapshot[mutant.module]).splitlines(keepends=True)
                sys.stdout.writelines(
                    difflib.unified_diff(
                        before, after, f"a/{PACKAGE}/{mutant.module}", f"b/{PACKAGE}/{mutant.module}", n=2
                    )
                )
                return 0
        print(f"no mutant {args.show!r} among {', '.join(modules)}", file=sys.stderr)
        return 2

    if args.only_survivors:
        mutants, lost = select_previous_survivors(args.only_survivors, mutants)
        for mutant_id in lost:
            print(f"note: earlier survivor {mutant_id} no longer exists (code changed); skipped", file=sys.stderr)
    patterns = [p.strip() for spec in args.only for p in spec.split(",") if p.strip()]
    if patterns:
        mutants = [m for m in mutants if any(m.id == p or fnmatch.fnmatchcase(m.id, p) for p in patterns)]
    if args.limit is not None:
        mutants = mutants[: args.limit]

    if args.list:
        for mutant in mutants:
            print(f"{mutant.id}\n    - {mutant.old}\n    + {mutant.new}")
        per = Counter(m.module for m in mutants)
        print("\n" + ", ".join(f"{m}: {per[m]}" for m in modules) + f"; total {len(mutants)}")
        return 0
    if not mutants:
        print("no mutants selected", file=sys.stderr)
        return 2

    # Plan tests -------------------------------------------------------------------------------------------------
    tests_root_rev = args.tests_from
    existing_tests = (
        set(git("ls-tree", "-r", "--name-only", tests_root_rev, "--", "tests").split()) if tests_root_rev else None
    )
    plans: dict[str, ModulePlan] = {}
    for module in sorted({m.module for m in mutants}, key=modules.index):
        override = [t.strip() for spec in args.tests for t in spec.split(",") if t.strip()]
        wanted_tests = override or list(TEST_MAP.get(module, []))
        present, missing = [], []
        for test in wanted_tests:
            file = test.split("::")[0]
            exists = file in existing_tests if existing_tests is not None else (REPO / file).exists()
            (present if exists else missing).append(test)
        for test in missing:
            print(
                f"note: {module}: {test} does not exist{f' at {tests_root_rev}' if tests_root_rev else ''}; skipped",
                file=sys.stderr,
            )
        if not present:
            print(f"warning: {module}: no test file to run; its mutants are skipped", file=sys.stderr)
        plans[module] = ModulePlan(module, present, missing)
    mutants = [m for m in mutants if plans[m.module].tests]

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or RESULTS_DIR / f"mutation-{stamp}.json"
    meta = {
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "src": describe_source(args.src_from),
        "tests": describe_source(args.tests_from),
        "jobs": args.jobs,
        "isolation": args.isolation,
        "targets": {m: targets[m] for m in modules},
    }
    results = Results(json_path, meta)

    # Workspaces -------------------------------------------------------------------------------------------------
    root = Path(tempfile.mkdtemp(prefix="inferbatch-mutation-", dir=args.workdir))
    jobs = max(1, min(args.jobs, len(mutants)))
    stop = threading.Event()
    started = time.monotonic()
    print(
        f"{len(mutants)} mutants in {', '.join(plans)}; copying the repository into {root} ({jobs} worker(s))",
        file=sys.stderr,
    )
    try:
        spaces = build_workspaces(root, jobs, args.python, args.isolation, args.src_from, args.tests_from, snapshot)
        for space in spaces:
            expected = str(space.dir / PACKAGE)
            for how, where in space.check_isolation().items():
                ok = where.startswith(expected)
                print(
                    f"[w{space.index}] isolation {args.isolation}: a child python ({how}) imports inferbatch "
                    f"from {where} {'(the copy)' if ok else '(NOT the copy)'}",
                    file=sys.stderr,
                )
                if not ok and args.isolation == "venv":
                    print("error: subprocess tests would not see the mutants", file=sys.stderr)
                    return 2
        try:
            run_baselines(spaces, plans, args, stop)
            results.modules = {m: dataclasses.asdict(p) for m, p in plans.items()}
            runnable = [m for m in mutants if plans[m.module].baseline_ok]
            for module, plan in plans.items():
                if not plan.baseline_ok:
                    print(
                        f"warning: {module}: tests not green without mutants; its mutants are not run\n"
                        f"{plan.baseline_note}",
                        file=sys.stderr,
                    )
            results.save()
            run_mutants(spaces, runnable, plans, results, stop)
        except KeyboardInterrupt:
            pass
    finally:
        if args.keep_workdir:
            print(f"copies kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    elapsed = time.monotonic() - started
    results.meta["seconds"] = round(elapsed, 1)
    results.meta["interrupted"] = stop.is_set()
    results.save()
    if args.json is None:
        shutil.copyfile(json_path, RESULTS_DIR / "latest.json")
    text = report(results, plans, elapsed)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    print(f"\nresults: {json_path}", file=sys.stderr)
    return 130 if stop.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
