"""`report --html`: a self-contained page from a real run, rendered by a real browser (SPEC §5, §8.23, §8.26).

Why a browser: a string check proves we *wrote* `<svg>` and `<table>`; only a browser
proves they *render*. Debian's headless Chromium loads the page from a file (no
network: the page has a CSP and no external references), dumps the DOM it built and
takes a screenshot in the same process. The DOM shows what the parser made of the
page (escaped text stays text, SVG stays SVG); the screenshot, decoded by a few lines
of zlib below (no Pillow), must contain the chart colours, so the bars were painted.

Without Chromium these tests fail, saying how to install it, unless INFERBATCH_NO_BROWSER=1,
which falls back to checking the page with `html.parser` only.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import chat_rows, connection_env, invoke, read_jsonl, write_jsonl
from inferbatch import report_html
from inferbatch.report_html import Bins, write_html
from inferbatch.results import read_output

EVIL_ID = "<script>document.title='pwned'</script>"
WINDOW = (1200, 2000)
COLORS = {"ok": "2f9e44", "error": "e03131", "invalid": "f59f00", "latency": "1c7ed6", "tokens": "7048e8"}


# ---- the page, as a parser sees it ----------------------------------------------------------------


@dataclass
class Page:
    """What a parse of the page holds: tags, attributes, text, and every table as rows of cell texts."""

    tags: Counter[str] = field(default_factory=Counter)
    attrs: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    title: str = ""

    def table(self, table_id: str) -> list[list[str]]:
        assert table_id in self.tables, f"no table #{table_id}; tables: {sorted(self.tables)}"
        return self.tables[table_id]

    def kv(self, *table_ids: str) -> dict[str, str]:
        return {row[0]: row[1] for table_id in table_ids for row in self.table(table_id)}

    def svgs(self) -> list[dict[str, str | None]]:
        return [a for tag, a in self.attrs if tag == "svg"]

    def fills(self) -> Counter[str]:
        return Counter(str(a.get("fill")).lstrip("#").lower() for tag, a in self.attrs if tag == "rect")


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.page.tags[tag] += 1
        self.page.attrs.append((tag, dict(attrs)))
        if tag == "table":
            self._table = self.page.tables.setdefault(dict(attrs).get("id") or f"table{self.page.tags[tag]}", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "title" and not self.page.tags["svg"]:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self._table[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        self.page.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.page.title += data


def parse(text: str) -> Page:
    parser = _Parser()
    parser.feed(text)
    parser.close()
    return parser.page


# ---- the browser -----------------------------------------------------------------------------------


def chromium() -> str | None:
    """Debian's Chromium, or None when INFERBATCH_NO_BROWSER=1; fails the test when it is missing."""
    if os.environ.get("INFERBATCH_NO_BROWSER") == "1":
        return None
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "headless Chromium is needed to check that the report renders: `apt-get install -y chromium` "
        "(Debian), or set INFERBATCH_NO_BROWSER=1 to check the HTML with a parser only"
    )


@dataclass
class Rendered:
    dom: str
    screenshot: Path | None


def render(html_path: Path, tmp_path: Path) -> Rendered:
    """Load the page in headless Chromium: the DOM it built and a screenshot of the window."""
    browser = chromium()
    if browser is None:
        return Rendered(html_path.read_text(encoding="utf-8"), None)
    shot = tmp_path / "report.png"
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--screenshot={shot}",
        "--dump-dom",
        html_path.resolve().as_uri(),
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "</html>" in done.stdout, f"no DOM from Chromium: {done.stderr[-2000:]}"
    return Rendered(done.stdout, shot)


def decode_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit PNG, enough for Chromium's screenshots."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data[pos + 8 : pos + 8 + length])
        elif kind == b"IDAT":
            chunks.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    assert header is not None
    width, height, depth, color_type, _, _, interlace = header
    assert depth == 8 and color_type in (2, 6) and interlace == 0, header
    bpp = 3 if color_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif kind == 4:
            for i in range(stride):
                a, b, c = (line[i - bpp], prev[i], prev[i - bpp]) if i >= bpp else (0, prev[i], 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


# ---- a real run ------------------------------------------------------------------------------------


@pytest.fixture
def real_output(runner: CliRunner, sim: Any, tmp_path: Path) -> Path:
    """The output of `inferbatch run` against the simulator: 21 ok, 3 error (400, 500 twice, 400), 1 invalid."""
    server = sim(latency_ms=5, latency_jitter_ms=30)
    rows: list[Any] = chat_rows(24)
    rows[3]["messages"][0]["content"] += " [[sim:400]]"
    rows[7]["messages"][0]["content"] += " [[sim:500]]"
    rows[11]["id"] = EVIL_ID
    rows[11]["messages"][0]["content"] += " [[sim:400]]"
    for i in range(14, 24, 3):
        rows[i]["messages"][0]["content"] += " and some more words" * i
    rows.insert(20, '{"id": "broken", "messages": [')  # line 21, index 20
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = invoke(
        runner, ["run", str(src), "-o", str(out), "--max-attempts", "2", "-c", "4"], env=connection_env(server)
    )

    assert result.exit_code == 1, result.output  # finished, some rows failed
    assert Counter(r["status"] for r in read_jsonl(out)) == {"ok": 21, "error": 3, "invalid": 1}
    return out


def test_report_from_a_real_run_renders_in_chromium(real_output: Path, tmp_path: Path) -> None:
    html_path = tmp_path / "report.html"
    write_html(read_output(str(real_output)), str(html_path))
    rows = read_jsonl(real_output)

    rendered = render(html_path, tmp_path)
    page = parse(rendered.dom)

    summary = page.kv("summary-outcome", "summary-requests")
    assert (summary["rows"], summary["ok"], summary["error"], summary["invalid"]) == ("25", "21", "3", "1")
    assert summary["status codes"] == "200: 21 · 400: 2 · 500: 1"
    assert summary["attempts"] == "25" and summary["retries"] == "1"  # the 500 was tried twice
    assert summary["latency max"] == f"{round(max(r['latency_ms'] or 0 for r in rows), 1):.3g} ms"
    assert summary["prompt tokens"] == f"{sum(r['prompt_tokens'] or 0 for r in rows):,}"

    assert len(page.svgs()) == 3  # latency, tokens, statuses
    fills = page.fills()
    for color in COLORS.values():
        assert fills[color] > 0, f"no bar drawn in #{color}: {fills}"

    failed = page.table("failed")
    assert [row[1] for row in failed[1:]] == ["row3", "row7", EVIL_ID, "<index 20>"]
    assert [row[3] for row in failed[1:]] == ["400", "500", "400", "—"]
    assert failed[4][5].startswith("invalid_row: line 21")

    slowest = page.table("slowest")[1:]
    assert len(slowest) == 20
    top = max((r for r in rows if r["latency_ms"] is not None), key=lambda r: r["latency_ms"])
    assert slowest[0][1] == top["id"]

    # The id that is a script is text on the page; the browser did not run it.
    assert page.title == "inferbatch report"
    assert page.tags["script"] == 0
    assert EVIL_ID in "".join(page.text)

    if rendered.screenshot is not None:
        assert rendered.screenshot.stat().st_size > 20_000
        width, height, pixels = decode_png(rendered.screenshot)
        assert (width, height) == WINDOW
        for name, color in COLORS.items():
            painted = sum(row.count(bytes.fromhex(color)) for row in pixels)
            assert painted > 500, f"the {name} colour #{color} is not on the screenshot ({painted} pixels)"


def test_report_is_self_contained(real_output: Path, tmp_path: Path) -> None:
    html_path = tmp_path / "report.html"
    write_html(read_output(str(real_output)), str(html_path))
    text = html_path.read_text(encoding="utf-8")

    page = parse(text)

    assert text.startswith("<!DOCTYPE html>")
    assert "http://" not in text and "https://" not in text
    assert "url(" not in text and "@import" not in text
    assert page.tags["script"] == 0
    for tag in ("link", "img", "iframe", "object", "embed", "base", "form"):
        assert page.tags[tag] == 0, tag
    for tag, attrs in page.attrs:
        assert not {"src", "href", "srcset", "action"} & attrs.keys(), (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
    policies = [a["content"] for tag, a in page.attrs if tag == "meta" and a.get("http-equiv")]
    assert policies == ["default-src 'none'; style-src 'unsafe-inline'"]
    assert page.tags["svg"] == 3 and page.tags["rect"] > 10
    assert "question 1" not in text  # never a prompt
    assert not list(html_path.parent.glob(".report.html.*"))  # the temp file was renamed into place


def test_untrusted_text_is_escaped_and_no_prompt_or_completion_is_shown(tmp_path: Path) -> None:
    records = [
        record(0, "ok", content="COMPLETION-TEXT", prompt="PROMPT-TEXT"),
        record(1, "error", row_id="<script>alert(1)</script>", error='boom: <img src=x onerror="alert(2)">'),
        {**record(2, "ok"), "variant": "<b>v</b>", "sample": 0, "passed": False, "failures": '["<i>x</i>"]'},
        {**record(2, "ok"), "variant": "plain", "sample": 0, "passed": True, "failures": "[]"},
    ]
    html_path = tmp_path / "r.html"

    write_html(records, str(html_path), title="<script>t</script>")

    text = html_path.read_text(encoding="utf-8")
    page = parse(text)
    for tag in ("script", "img", "b", "i"):
        assert page.tags[tag] == 0, tag
    shown = "".join(page.text)
    for literal in ("<script>alert(1)</script>", 'boom: <img src=x onerror="alert(2)">', "<b>v</b>", "<i>x</i>"):
        assert literal in shown
    assert page.title == "<script>t</script>"
    assert "COMPLETION-TEXT" not in text and "PROMPT-TEXT" not in text


# ---- evaluation runs -------------------------------------------------------------------------------


def record(
    index: int,
    status: str,
    *,
    row_id: str | None = None,
    latency_ms: float | None = 10.0,
    error: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    ok = status == "ok"
    return {
        "id": row_id if row_id is not None else f"r{index}",
        "index": index,
        "status": status,
        "status_code": 200 if ok else 500,
        "content": "answer" if ok else None,
        "finish_reason": "stop" if ok else None,
        "model": "m",
        "prompt_tokens": 10 if ok else None,
        "completion_tokens": 5 if ok else None,
        "total_tokens": 15 if ok else None,
        "attempts": 1,
        "latency_ms": latency_ms,
        "error": error if error is not None else (None if ok else "internal_server_error: boom"),
        "tool_calls": None,
        "request_id": None,
        **extra,
    }


def eval_records() -> list[dict[str, Any]]:
    """Two variants over 10 questions x 2 samples, variant-major: "a" passes all 20, "b" fails 4."""
    b_fails = {("q0", 0), ("q1", 1), ("q4", 0), ("q9", 1)}
    out = []
    for variant in ("a", "b"):
        for q in range(10):
            for sample in range(2):
                passed = variant == "a" or (f"q{q}", sample) not in b_fails
                failures = [] if passed else ["contains", "max-tokens"] if q == 0 else ["contains"]
                out.append(
                    {
                        **record(len(out), "ok", row_id=f"q{q}", latency_ms=5.0 + q),
                        "variant": variant,
                        "sample": sample,
                        "passed": passed,
                        "failures": json.dumps(failures),
                        "cached": False,
                    }
                )
    return out


def test_variants_pass_rates_with_wilson_intervals_and_disagreements(tmp_path: Path) -> None:
    html_path = tmp_path / "eval.html"

    write_html(eval_records(), str(html_path))

    page = parse(html_path.read_text(encoding="utf-8"))
    variants = {row[0]: row[1:] for row in page.table("variants")[1:]}
    # rows, judged, passed, pass rate, Wilson 95 % (16/20 is the textbook 0.584-0.919), failed assertions
    assert variants["a"][:5] == ["20", "20", "20", "100.0%", "83.9% – 100.0%"]
    assert variants["b"][:5] == ["20", "20", "16", "80.0%", "58.4% – 91.9%"]
    assert variants["b"][5] == "contains: 4 · max-tokens: 1"

    chart = [a for tag, a in page.attrs if tag == "svg" and a.get("aria-label") == "pass rate per variant"]
    assert len(chart) == 1
    bars = [a for tag, a in page.attrs if tag == "rect" and a.get("class") == "bar"]
    widths = [float(str(a["width"])) for a in bars]
    assert len(widths) == 2 and widths[1] == pytest.approx(widths[0] * 0.8, abs=0.2)
    assert page.tags["path"] == 2  # a whisker per variant

    disagreements = page.table("disagreements")
    assert disagreements[0] == ["id", "sample", "a", "b"]
    assert sorted(disagreements[1:]) == [
        ["q0", "0", "pass", "fail contains, max-tokens"],
        ["q1", "1", "pass", "fail contains"],
        ["q4", "0", "pass", "fail contains"],
        ["q9", "1", "pass", "fail contains"],
    ]
    assert "4 rows where variants disagree." in "".join(page.text)


def test_variants_render_in_chromium(tmp_path: Path) -> None:
    html_path = tmp_path / "eval.html"
    write_html(eval_records(), str(html_path))

    page = parse(render(html_path, tmp_path).dom)

    assert len(page.table("disagreements")) == 5
    assert page.kv("summary-outcome")["rows"] == "40"
    assert sum(1 for tag, a in page.attrs if tag == "rect" and a.get("class") == "bar") == 2


def test_disagreements_beyond_the_window_are_not_compared_and_the_page_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_html, "DISAGREEMENT_WINDOW", 5)
    html_path = tmp_path / "eval.html"

    write_html(eval_records(), str(html_path))  # variant "b" comes 20 rows after "a"

    text = "".join(parse(html_path.read_text(encoding="utf-8")).text)
    assert "None found." in text
    assert "35 keys left that window before every variant was seen" in text


def test_a_variant_with_no_judged_row_shows_no_pass_rate_and_the_whole_interval(tmp_path: Path) -> None:
    """No row judged (no `passed` column) is no pass rate: not 0 %, and a Wilson interval of 0-100 %, the same
    (0.0, 1.0) that evaluation.wilson gives the JSON summary and the terminal table."""
    records = eval_records()[:20] + [record(20 + i, "ok", row_id=f"q{i}", variant="unjudged") for i in range(3)]
    html_path = tmp_path / "eval.html"

    write_html(records, str(html_path))

    page = parse(html_path.read_text(encoding="utf-8"))
    variants = {row[0]: row[1:] for row in page.table("variants")[1:]}
    assert variants["unjudged"][:5] == ["3", "0", "0", "—", "0.0% – 100.0%"]
    assert variants["a"][:5] == ["20", "20", "20", "100.0%", "83.9% – 100.0%"]
    text = "".join(page.text)
    assert "none judged" in text and "100.0% of 20" in text
    titles = [t for t in page.text if t.startswith("unjudged:")]
    assert titles == ["unjudged: 0/0 passed (—), Wilson 95 % 0.0% – 100.0%"]
    assert page.tags["path"] == 1  # a whisker for "a" only: an interval over nothing is not drawn


# ---- bounded memory --------------------------------------------------------------------------------


def test_tables_are_bounded_and_say_how_many_rows_there_are(tmp_path: Path) -> None:
    records = [record(i, "error" if i % 2 else "ok", latency_ms=float(i)) for i in range(5_000)]
    html_path = tmp_path / "r.html"

    write_html(iter(records), str(html_path))

    page = parse(html_path.read_text(encoding="utf-8"))
    assert [row[1] for row in page.table("slowest")[1:]] == [f"r{i}" for i in range(4_999, 4_979, -1)]
    failed = page.table("failed")[1:]
    assert len(failed) == 50 and failed[0][1] == "r1" and failed[-1][1] == "r99"
    assert "2,500 rows did not end ok; the first 50 in input order are shown." in "".join(page.text)


def test_bins_merge_without_losing_counts() -> None:
    bins = Bins(categories=2, max_bins=16)
    for value in range(1_000):
        bins.add(value, value % 2)

    assert len(bins.counts) <= 16 and bins.width == 64
    assert sum(sum(slot) for slot in bins.counts.values()) == 1_000
    first, width, bars = bins.bars(0, 999, 10)
    assert (first, width, len(bars)) == (0, 128, 8)
    assert [sum(bar) for bar in bars] == [128] * 7 + [104]
    assert [bar[1] for bar in bars[:2]] == [64, 64]


def test_a_file_that_is_not_results_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    html_path = tmp_path / "r.html"

    with pytest.raises(ValueError, match="not an inferbatch result"):
        write_html([{"id": "x", "messages": []}], str(html_path))

    assert list(tmp_path.iterdir()) == []


# ---- structured output (SPEC §8.42) ---------------------------------------------------------------


def structured_records() -> list[dict[str, Any]]:
    """4 ok with `parsed`; schema mismatches: 3 on `$.urgency` (interleaved), 1 on `$`; one 500 with no answer."""
    mismatch = {
        2: "schema_mismatch: $.urgency: 'soon' is not one of ['low', 'high']",
        3: "schema_mismatch: $: 'urgency' is a required property",
        5: "schema_mismatch: $.urgency: 'later' is not one of ['low', 'high']",
        7: "schema_mismatch: $.urgency: 3 is not of type 'string'",
    }
    out = []
    for i in range(9):
        if i in mismatch:
            row = {**record(i, "error", error=mismatch[i]), "status_code": 200, "content": "{}", "parsed": None}
        elif i == 8:
            row = {**record(i, "error"), "parsed": None}  # a 500: an error, but no schema mismatch
        else:
            row = {**record(i, "ok"), "parsed": '{"urgency":"low"}'}
        out.append(row)
    return out


def test_schema_mismatches_show_their_count_and_most_frequent_paths(runner: CliRunner, tmp_path: Path) -> None:
    out = write_jsonl(tmp_path / "out.jsonl", structured_records())
    html_path = tmp_path / "report.html"

    result = invoke(runner, ["report", str(out), "--html", str(html_path)])

    assert result.exit_code == 0, result.output
    page = parse(html_path.read_text(encoding="utf-8"))
    facts = page.kv("schema-summary")
    assert facts["schema mismatch"] == "4 (44.4% of rows)"
    assert facts["parsed answers"] == "4"
    assert facts["failing paths"] == "2"
    paths = page.table("schema-paths")
    assert paths[0] == ["#", "path", "rows", "share", "example message"]
    assert paths[1:] == [
        ["1", "$.urgency", "3", "75.0%", "'soon' is not one of ['low', 'high']"],  # the first seen is the example
        ["2", "$", "1", "25.0%", "'urgency' is a required property"],
    ]
    cards = {a.get("data-field") for tag, a in page.attrs if tag == "div" and a.get("data-field")}
    assert "schema mismatch" in cards


def test_hostile_paths_are_text_and_render_in_chromium(tmp_path: Path) -> None:
    """Paths hold the model's own keys: jsonschema brackets odd ones (`$['a: b']`, which holds `: ` itself)."""
    records = [
        record(0, "error", error="schema_mismatch: $.<script>document.title='pwned'</script>: bad key"),
        record(1, "error", error="schema_mismatch: $['<img src=x onerror=alert(1)>: b'][0]: <b>bold</b> is wrong"),
        record(2, "error", error="schema_mismatch: $['<img src=x onerror=alert(1)>: b'][0]: again"),
    ]
    html_path = tmp_path / "r.html"
    write_html(records, str(html_path))

    page = parse(render(html_path, tmp_path).dom)

    assert page.title == "inferbatch report"
    for tag in ("script", "img", "b"):
        assert page.tags[tag] == 0, tag
    assert page.table("schema-paths")[1:] == [
        ["1", "$['<img src=x onerror=alert(1)>: b'][0]", "2", "66.7%", "<b>bold</b> is wrong"],
        ["2", "$.<script>document.title='pwned'</script>", "1", "33.3%", "bad key"],
    ]


def test_distinct_paths_are_capped_and_the_rest_counted_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_html, "MAX_SCHEMA_PATHS", 3)
    records = [record(i, "error", error=f"schema_mismatch: $.k{i % 6}: no") for i in range(30)]
    html_path = tmp_path / "r.html"

    write_html(iter(records), str(html_path))

    page = parse(html_path.read_text(encoding="utf-8"))
    rows = page.table("schema-paths")[1:]
    assert [(row[1], row[2]) for row in rows] == [("(other paths)", "15"), ("$.k0", "5"), ("$.k1", "5"), ("$.k2", "5")]
    assert rows[0][4] == "—"
    assert page.kv("schema-summary")["failing paths"] == "4+"
    assert "counted as (other paths)" in "".join(page.text)


def test_a_parsed_column_without_mismatches_says_so(tmp_path: Path) -> None:
    records = [{**record(i, "ok"), "parsed": "{}"} for i in range(3)]
    html_path = tmp_path / "r.html"

    write_html(records, str(html_path))

    page = parse(html_path.read_text(encoding="utf-8"))
    assert page.kv("schema-summary")["schema mismatch"] == "0 (0.0% of rows)"
    assert "schema-paths" not in page.tables
    assert "No schema mismatch." in "".join(page.text)


def test_no_schema_section_without_structured_rows(runner: CliRunner, tmp_path: Path) -> None:
    records = [record(0, "ok"), record(1, "error", error="internal_server_error: $.x: looks like a path")]
    out = write_jsonl(tmp_path / "out.jsonl", records)
    html_path = tmp_path / "report.html"

    result = invoke(runner, ["report", str(out), "--html", str(html_path)])

    assert result.exit_code == 0, result.output
    text = html_path.read_text(encoding="utf-8")
    page = parse(text)
    assert not {"schema-summary", "schema-paths"} & page.tables.keys()
    assert 'id="schema"' not in text and "Structured output" not in text and "schema mismatch" not in text
