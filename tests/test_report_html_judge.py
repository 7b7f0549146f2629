"""`report --html` on a run with an llm-rubric assertion (SPEC §8.44): the judge section.

The output files are written by hand, as the contract has them: `failures` and `judge` are JSON
text, one `judge` entry per rubric. The page is read back with the parser of test_report_html
(tables as rows of cell texts), and once rendered by headless Chromium.
"""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from conftest import invoke, write_jsonl
from inferbatch.report_html import JUDGE_COLOR, ReportCollector, render_html, write_html
from inferbatch.results import read_output
from test_report_html import decode_png, parse, record, render

EVIL = "<script>document.title='pwned'</script>"


def verdict(
    name: str = "polite",
    holds: bool | None = True,
    score: float | None = None,
    *,
    reason: str = "fine",
    error: str | None = None,
    requests: int = 1,
    prompt_tokens: int = 100,
    completion_tokens: int = 20,
    cached_tokens: int = 0,
    model: str = "claude-4-5-haiku",
    agreement: float | None = None,
) -> dict[str, Any]:
    """One `judge` entry; an error has no vote: pass, score null and holds false."""
    if error is not None:
        holds, score, reason = False, None, ""
    return {
        "name": name,
        "pass": None if error is not None else holds,
        "score": score if score is not None or error is not None else (1.0 if holds else 0.0),
        "reason": reason,
        "holds": holds,
        "threshold": 0.5,
        "model": model,
        "requests": requests,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cached_tokens": cached_tokens,
        "cached": requests == 0,
        "error": error,
        "votes": 0 if error is not None else 1,
        "agreement": agreement,
    }


def judged(
    index: int,
    verdicts: list[dict[str, Any]] | None,
    *,
    variant: str | None = "a",
    failed: tuple[str, ...] = (),
    sample: int = 0,
    row_id: str | None = None,
    judge: Any = ...,
) -> dict[str, Any]:
    """An ok row of an evaluation run: `failed` deterministic assertions, plus what the judge's verdicts add."""
    failures = list(failed)
    for v in verdicts or []:
        if v["error"] is not None:
            failures.append("llm-rubric:error")
        elif not v["holds"]:
            failures.append("llm-rubric")
    return {
        **record(index, "ok", row_id=row_id),
        "variant": variant,
        "sample": sample,
        "passed": not failures,
        "failures": json.dumps(failures),
        "judge": json.dumps(verdicts) if judge is ... else judge,
    }


def page_of(records: list[dict[str, Any]], **options: Any) -> tuple[str, Any]:
    """The page's HTML and its parse, through the Python API."""
    collector = ReportCollector(**options)
    for r in records:
        collector.add(r)
    text = render_html(collector)
    return text, parse(text)


def bins(text: str, variant: str) -> dict[str, int]:
    """The bars of a variant's score chart: bin label -> count, from each bar's tooltip."""
    return {label: int(count.split()[0]) for label, count in _tips(text, variant)}


def _tips(text: str, variant: str) -> list[tuple[str, str]]:
    match = re.search(rf'<svg [^>]*aria-label="judge scores: {re.escape(variant)}">(.*?)</svg>', text, re.DOTALL)
    assert match, f"no score chart for {variant}"
    tips = re.findall(rf'<rect [^>]*fill="{JUDGE_COLOR}"><title>([^<]*)</title>', match[1])
    return [tuple(unescape(t).split(": ", 1)) for t in tips]  # type: ignore[misc]


# ---- pass rates, errors, the bill ------------------------------------------------------------------


def two_variants() -> list[dict[str, Any]]:
    """a: 8 of 10 hold. b: 5 hold, 3 fail, 2 judge errors (2 requests each, no tokens)."""
    out = []
    for i in range(10):
        out.append(judged(len(out), [verdict(holds=i < 8)], variant="a", row_id=f"q{i}"))
    for i in range(10):
        v = verdict(error="judge_unparseable", requests=2, prompt_tokens=0, completion_tokens=0) if i >= 8 else None
        out.append(judged(len(out), [v or verdict(holds=i < 5)], variant="b", row_id=f"q{i}"))
    return out


def test_pass_rates_and_wilson_per_variant_with_errors_out_of_the_denominator(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = write_jsonl(tmp_path / "out.jsonl", two_variants())
    html_path = tmp_path / "report.html"

    result = invoke(runner, ["report", str(out), "--html", str(html_path)])

    assert result.exit_code == 0, result.output
    page = parse(html_path.read_text(encoding="utf-8"))
    table = page.table("judge-verdicts")
    assert table[0] == [
        "variant",
        "rubric",
        "verdicts",
        "judged",
        "held",
        "pass rate",
        "Wilson 95 %",
        "errors",
    ]  # no agreement column: no entry has one (K=1)
    # 8/10 and 5/8 are the textbook Wilson intervals 0.490-0.943 and 0.306-0.863
    assert table[1:] == [
        ["a", "polite", "10", "10", "8", "80.0%", "49.0% – 94.3%", "0"],
        ["b", "polite", "10", "8", "5", "62.5%", "30.6% – 86.3%", "2"],
    ]
    # The judge's bill at claude-4-5-haiku's table price ($1 / $5 per M): a 10 x (100 x 1 + 20 x 5) = $0.0020.
    calls = page.table("judge-calls")
    assert calls[1:] == [
        ["a", "10", "10", "1,000", "200", "0", "0.0020"],
        ["b", "10", "12", "800", "160", "0", "0.0016"],
        ["all variants", "20", "22", "1,800", "360", "0", "0.0036"],
    ]
    assert page.kv("summary-requests")["prompt tokens"] == "200"  # the answers' figures stay the answers' only
    cards = {a.get("data-field") for tag, a in page.attrs if tag == "div" and a.get("data-field")}
    assert "judge held" in cards
    assert "13 / 18" in page.text


def test_rubrics_each_get_a_row_under_their_variant_and_a_row_for_all(tmp_path: Path) -> None:
    records = [
        judged(0, [verdict("polite", True), verdict("short", False)], variant=None),
        judged(1, [verdict("polite", True), verdict("short", True)], variant=None),
        judged(2, [verdict("polite", False), verdict("short", None, error="http 500")], variant=None),
    ]

    _, page = page_of(records)

    assert page.table("judge-verdicts")[1:] == [
        ["default", "all rubrics", "6", "5", "3", "60.0%", "23.1% – 88.2%", "1"],
        ["default", "polite", "3", "3", "2", "66.7%", "20.8% – 93.9%", "0"],
        ["default", "short", "3", "2", "1", "50.0%", "9.5% – 90.5%", "1"],
    ]


def test_judge_cost_with_price_flags_unknown_without_and_a_floor_when_partly_priced(
    runner: CliRunner, tmp_path: Path
) -> None:
    records = [
        judged(0, [verdict(model="local-judge", cached_tokens=40)], variant="flagged"),
        judged(1, [verdict(model="local-judge", requests=0, prompt_tokens=0, completion_tokens=0)], variant="flagged"),
        judged(2, [verdict(model="claude-4-5-haiku")], variant="mixed"),
        judged(3, [verdict(model="local-judge")], variant="mixed"),
    ]
    out = write_jsonl(tmp_path / "out.jsonl", records)

    priced, unpriced = tmp_path / "priced.html", tmp_path / "unpriced.html"
    assert (
        invoke(runner, ["report", str(out), "--html", str(priced), "--price-in", "2", "--price-out", "10"]).exit_code
        == 0
    )
    assert invoke(runner, ["report", str(out), "--html", str(unpriced)]).exit_code == 0

    # --price-in sets the prompt price, cached tokens included: 100 x 2 + 20 x 10 = 400 per M.
    rows = {r[0]: r[1:] for r in parse(priced.read_text(encoding="utf-8")).table("judge-calls")[1:]}
    assert rows["flagged"] == ["2", "1", "100", "20", "40", "0.0004"]
    assert rows["mixed"][-1] == "0.0008"
    rows = {r[0]: r[1:] for r in parse(unpriced.read_text(encoding="utf-8")).table("judge-calls")[1:]}
    assert rows["flagged"][-1] == "unknown (no price for the judge model)"
    assert rows["mixed"][-1] == "≥ 0.0002 (1 verdicts unpriced)"  # haiku's 100 x 1 + 20 x 5
    assert rows["all variants"][-1] == "≥ 0.0002 (2 verdicts unpriced)"


# ---- the score histogram ---------------------------------------------------------------------------


def test_score_histogram_counts_each_score_in_its_tenth_and_one_in_the_last(tmp_path: Path) -> None:
    scores = [0.0, 0.05, 0.1, 0.15, 0.3, 0.5, 0.7, 0.95, 0.99, 1.0, 1.0, 1]
    records = [judged(i, [verdict(holds=s >= 0.5, score=s)], variant="a") for i, s in enumerate(scores)]
    records.append(judged(len(records), [verdict(error="timeout")], variant="a"))  # no score
    records.append(judged(len(records), [verdict(score=0.25)], variant="b"))

    text, _ = page_of(records)

    assert bins(text, "a") == {
        "0.0 – 0.1": 2,
        "0.1 – 0.2": 2,
        "0.3 – 0.4": 1,
        "0.5 – 0.6": 1,
        "0.7 – 0.8": 1,
        "0.9 – 1.0": 5,
    }
    assert bins(text, "b") == {"0.2 – 0.3": 1}


# ---- judge and assertions disagree -----------------------------------------------------------------


def mixed_run() -> list[dict[str, Any]]:
    return [
        judged(0, [verdict(score=0.9)], row_id="both-pass"),
        judged(1, [verdict(score=0.8, reason="polite enough")], failed=("contains",), row_id="judge-passes"),
        judged(2, [verdict(holds=False, score=0.1, reason="rude")], variant="b", sample=3, row_id="judge-fails"),
        judged(3, [verdict(holds=False)], failed=("contains", "regex"), row_id="both-fail"),
        judged(4, [verdict(error="http 500")], row_id="judge-error"),
        {**judged(5, None, row_id="judge-pending"), "failures": '["llm-rubric:pending"]', "passed": False},
        {
            **record(6, "error", row_id="not-ok"),
            "variant": "a",
            "passed": False,
            "failures": '["status"]',
            "judge": None,
        },
        judged(
            7,
            [verdict("polite", False, 0.2, reason="rude"), verdict("short", True, 0.9, reason="short")],
            row_id="one-rubric-fails",
        ),
    ]


def test_rows_where_judge_and_assertions_disagree_are_listed_and_agreeing_rows_are_not(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = write_jsonl(tmp_path / "out.jsonl", mixed_run())
    html_path = tmp_path / "report.html"

    assert invoke(runner, ["report", str(out), "--html", str(html_path)]).exit_code == 0

    page = parse(html_path.read_text(encoding="utf-8"))
    table = page.table("judge-disagreements")
    assert table[0] == [
        "id",
        "variant",
        "sample",
        "judge",
        "assertions",
        "judge score",
        "judge reason",
        "failed assertions",
    ]
    assert table[1:] == [
        ["judge-passes", "a", "0", "pass", "fail", "0.80", "polite enough", "contains"],
        ["judge-fails", "b", "3", "fail", "pass", "0.10", "rude", "—"],
        ["one-rubric-fails", "a", "0", "fail", "pass", "polite 0.20", "polite: rude", "—"],  # the failing one
    ]
    text = "".join(page.text)
    assert "3 rows where the judge (every rubric holds) and the deterministic assertions disagree." in text
    assert "Judge and assertions disagree — read these first" in text
    # the errored and pending verdicts are counted, not compared
    assert page.table("judge-verdicts")[1][-1] == "1"


def test_a_judge_only_run_lists_no_disagreement_unless_told_it_had_assertions(tmp_path: Path) -> None:
    """No row failed a deterministic assertion: the file cannot tell a run without any from one where all held."""
    records = [judged(i, [verdict(holds=i % 2 == 0)], row_id=f"r{i}") for i in range(6)]

    _, page = page_of(records)

    assert "judge-disagreements" not in page.tables
    text = "".join(page.text)
    assert "the 3 rows only the judge failed are not compared" in text and "None found." in text

    _, page = page_of(records, deterministic_assertions=True)

    assert [row[0] for row in page.table("judge-disagreements")[1:]] == ["r1", "r3", "r5"]


def test_a_late_assertion_failure_makes_earlier_judge_only_failures_disagreements(tmp_path: Path) -> None:
    records = [judged(i, [verdict(holds=False)], row_id=f"r{i}") for i in range(3)]
    records.append(judged(3, [verdict(holds=False)], failed=("max-tokens",), row_id="agrees"))

    _, page = page_of(records)

    assert [row[0] for row in page.table("judge-disagreements")[1:]] == ["r0", "r1", "r2"]


def test_the_disagreement_table_keeps_50_rows_and_says_how_many_there_are(tmp_path: Path) -> None:
    records = [judged(i, [verdict(holds=False, reason="x" * 500)], row_id=f"r{i}") for i in range(120)]
    records.append(judged(120, [verdict()], failed=("contains",), row_id="last"))

    collector = ReportCollector()
    for r in records:
        collector.add(r)
    page = parse(render_html(collector))

    rows = page.table("judge-disagreements")[1:]
    assert len(rows) == 50 and len(collector.judge_disagreements) == 50
    assert rows[0][0] == "r0" and rows[-1][0] == "r49"
    assert len(rows[0][6]) == 200 and rows[0][6].endswith("…")  # the reason, clipped
    assert "121 rows where the judge" in "".join(page.text)
    assert "the first 50 in input order are shown" in "".join(page.text)


# ---- untrusted text, odd cells, other files --------------------------------------------------------


def test_reasons_rubric_names_variants_and_ids_are_escaped(tmp_path: Path) -> None:
    records = [
        judged(0, [verdict("<b>rubric</b>", False, 0.1, reason=EVIL)], variant="<i>v</i>", row_id="<img src=x>"),
        judged(1, [verdict("<b>rubric</b>", True, 0.9)], variant="<i>v</i>", failed=("<u>kind</u>",)),
    ]
    html_path = tmp_path / "r.html"

    write_html(records, str(html_path))

    page = parse(html_path.read_text(encoding="utf-8"))
    for tag in ("script", "b", "i", "img", "u"):
        assert page.tags[tag] == 0, tag
    assert page.title == "inferbatch report"
    shown = "".join(page.text)
    for literal in (EVIL, "<b>rubric</b>", "<i>v</i>", "<img src=x>", "<u>kind</u>"):
        assert literal in shown
    assert page.table("judge-disagreements")[1][6] == EVIL


def test_no_judge_section_without_a_judge_column_or_with_only_nulls(tmp_path: Path) -> None:
    plain = [{**record(i, "ok"), "variant": "a", "passed": True, "failures": "[]"} for i in range(3)]
    nulls = [{**r, "judge": None} for r in plain]

    for records in (plain, nulls):
        text, page = page_of(records)
        assert 'id="judge' not in text and "LLM judge" not in text and "judge held" not in text
        assert "variants" in page.tables  # the rest of the evaluation report is still there


def test_unreadable_judge_cells_are_skipped_not_fatal(tmp_path: Path) -> None:
    records = [
        judged(0, [verdict()], row_id="fine"),
        judged(1, None, judge="not json ["),
        judged(2, None, judge='{"name": "polite"}'),
        judged(3, None, judge='[1, "x", {"name": "polite", "holds": "yes"}]'),
        judged(4, None, judge="null"),
    ]

    _, page = page_of(records)

    text = "".join(page.text)
    assert "2 rows skipped: their `judge` is not a JSON list" in text
    assert "1 verdicts with neither an error nor a `holds` are not counted" in text
    assert page.table("judge-verdicts")[1][:5] == ["a", "polite", "1", "1", "1"]


def test_pending_verdicts_are_counted_apart_and_not_as_failures(tmp_path: Path) -> None:
    """A stop cut the judging off (SPEC §8.44): the entry says pending, holds false, error null."""
    pending = {**verdict(holds=False, score=None), "pass": None, "score": None, "pending": True, "votes": 0}
    records = [
        judged(0, [verdict()], failed=("contains",)),
        judged(1, [verdict(holds=False)]),
        {**judged(2, [pending]), "failures": '["llm-rubric:pending"]'},
    ]

    text, page = page_of(records)

    table = page.table("judge-verdicts")
    assert table[0][-1] == "pending"
    assert table[1] == ["a", "polite", "2", "2", "1", "50.0%", "9.5% – 90.5%", "0", "1"]
    assert "1 verdicts pending: a stop cut them off, the next run asks the judge" in "".join(page.text)
    assert [row[0] for row in page.table("judge-disagreements")[1:]] == ["r0", "r1"]  # not the pending row
    assert bins(text, "a") == {"0.0 – 0.1": 1, "0.9 – 1.0": 1}


def test_judge_repeat_shows_the_mean_agreement(tmp_path: Path) -> None:
    records = [
        judged(0, [verdict(agreement=1.0)]),
        judged(1, [verdict(agreement=2 / 3)]),
        judged(2, [verdict(holds=False, agreement=1.0)]),
        judged(3, [verdict(error="http 500", agreement=None)]),
    ]

    _, page = page_of(records)

    table = page.table("judge-verdicts")
    assert table[0][-1] == "mean agreement"
    assert table[1] == ["a", "polite", "4", "3", "2", "66.7%", "20.8% – 93.9%", "1", "88.9%"]


def test_a_parquet_output_file_with_judge_as_a_string_column(runner: CliRunner, tmp_path: Path) -> None:
    records = two_variants()
    out = tmp_path / "out.parquet"
    pq.write_table(pa.Table.from_pylist(records), out)
    assert pq.read_schema(out).field("judge").type == pa.string()
    html_path = tmp_path / "report.html"

    result = invoke(runner, ["report", str(out), "--html", str(html_path)])

    assert result.exit_code == 0, result.output
    page = parse(html_path.read_text(encoding="utf-8"))
    assert [row[5:8] for row in page.table("judge-verdicts")[1:]] == [
        ["80.0%", "49.0% – 94.3%", "0"],
        ["62.5%", "30.6% – 86.3%", "2"],
    ]
    assert page.table("judge-calls")[-1] == ["all variants", "20", "22", "1,800", "360", "0", "0.0036"]
    assert next(read_output(str(out)))["judge"] == records[0]["judge"]  # read back as the same JSON text


def test_judge_section_renders_in_chromium(tmp_path: Path) -> None:
    records = [judged(i, [verdict(holds=i % 3 > 0, score=i / 12)], variant=None) for i in range(12)]
    records.append(judged(12, [verdict(reason=EVIL)], variant=None, failed=("contains",), row_id="flagged"))
    html_path = tmp_path / "judge.html"
    write_html(records, str(html_path))

    rendered = render(html_path, tmp_path)
    page = parse(rendered.dom)

    assert page.tags["script"] == 0 and page.title == "inferbatch report"
    assert page.table("judge-verdicts")[1][:6] == ["default", "polite", "13", "13", "9", "69.2%"]
    flagged = [row for row in page.table("judge-disagreements")[1:] if row[0] == "flagged"]
    assert flagged == [["flagged", "default", "0", "pass", "fail", "1.00", EVIL, "contains"]]
    assert any(a.get("aria-label") == "judge scores: default" for a in page.svgs())
    if rendered.screenshot is not None:
        _, _, pixels = decode_png(rendered.screenshot)
        painted = sum(row.count(bytes.fromhex(JUDGE_COLOR.lstrip("#"))) for row in pixels)
        assert painted > 500, f"the score histogram's colour is not on the screenshot ({painted} pixels)"
