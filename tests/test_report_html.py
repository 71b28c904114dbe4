"""report.html, the notebook views, the paper's rows and `geonorm compare`, read as HTML/CSV/Markdown.

What a browser shows (sorting, figures drawn, no requests at run time) is tested in
tests/test_report_browser.py; here the files themselves: self-contained, tables that need no script,
numbers equal to report.json's, comparisons that say where the reports differ.
"""
from __future__ import annotations

import csv
import json
import math
from html.parser import HTMLParser

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("transformers")

from tiny_models import tiny

import geonorm_core as gn
from geonorm_core import Report, analyze
from geonorm_core.analysis.compare import compare, load_report
from geonorm_core.analysis.figures import depth_series
from geonorm_core.analysis.paper import PAPER_ROWS, summary
from geonorm_core.cli import main

pytestmark = pytest.mark.slow   # renders every page with matplotlib: the full tier only


def batches(n=2, b=3, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 97, (b, t), generator=g)} for _ in range(n)]


@pytest.fixture(scope="module")
def reports():
    """A tiny pre-LN Llama (RMSNorm) and GPT-2 (LayerNorm), 2 layers each, and GPT-2 with 4 layers."""
    return {"llama": analyze(tiny("llama"), batches(), meta={"model_name": "tiny-llama", "dtype": "float32"}),
            "gpt2": analyze(tiny("gpt2"), batches(), meta={"model_name": "tiny-gpt2"}),
            "gpt2-4": analyze(tiny("gpt2", n_layer=4), batches(), exclude_first_token=True, bins=90,
                              meta={"model_name": "tiny-gpt2-4"})}


@pytest.fixture(scope="module")
def saved(reports, tmp_path_factory):
    """The tiny Llama's and GPT-2's report folders, saved once (figures included)."""
    root = tmp_path_factory.mktemp("saved")
    return {key: (root / key, reports[key].save(root / key)) for key in ("llama", "gpt2")}


class Page(HTMLParser):
    """Every tag with its attributes, and the cells of each table by id (rows of (attrs, text))."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: dict[str, list[list[tuple[dict, str]]]] = {}
        self._table = None
        self._cell = None
        self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", f"t{len(self.tables)}"), [])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self._table.append([])
        elif tag == "td" and self._in_body and self._table is not None:
            self._cell = [a, ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._table[-1].append(tuple(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None


def external_references(page: Page) -> list[str]:
    """Every src/href/action/poster that is not a data: URI or an in-page anchor, and any <link>/<iframe>."""
    out = []
    for tag, a in page.tags:
        if tag in ("link", "iframe", "object", "embed", "base"):
            out.append(f"<{tag}>")
        for key in ("src", "href", "action", "poster", "srcset", "data"):
            v = a.get(key)
            if v is not None and not v.startswith(("data:", "#")):
                out.append(f"{tag} {key}={v[:60]}")
    return out


def test_save_writes_one_self_contained_page(saved):
    folder, paths = saved["llama"]
    html_path = folder / "report.html"
    assert str(html_path) in paths
    text = html_path.read_text(encoding="utf-8")
    page = Page(text)
    assert external_references(page) == []
    assert "@import" not in text and "url(http" not in text
    csp = [a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]
    imgs = [a for t, a in page.tags if t == "img"]
    assert len(imgs) == 5 and all(a["src"].startswith("data:image/svg+xml") and a.get("alt") for a in imgs)
    assert "@media print" in text


def test_external_reference_finder_sees_a_fetch():
    page = Page('<img src="https://example.invalid/x.png"><link rel=stylesheet href="s.css"><a href="#x">x</a>')
    assert len(external_references(page)) == 3


def test_tables_need_no_script_and_match_report_json(reports, saved):
    """The per-site table is a plain table (one row per site), each number's data-v is report.json's value
    and its text that value rounded."""
    report = reports["gpt2"]
    tmp_path = saved["gpt2"][0]
    data = json.loads((tmp_path / "report.json").read_text())
    page = Page((tmp_path / "report.html").read_text(encoding="utf-8"))
    rows = page.tables["sites"]
    assert len(rows) == len(data["sites"]) == len(report.sites)
    from geonorm_core.analysis.report_html import SITE_COLUMNS

    for row in rows:
        name = row[0][1]
        site = data["sites"][name]
        assert row[2][1] == (site["meta"]["role"] or "–")
        assert int(row[5][0]["data-v"]) == report.sites[name].tokens
        for i, (q, _, digits) in enumerate(SITE_COLUMNS):
            mean_cell, sd_cell = row[6 + 2 * i], row[7 + 2 * i]
            want = report.sites[name][q]
            assert float(mean_cell[0]["data-v"]) == want.mean, (name, q)
            assert float(sd_cell[0]["data-v"]) == want.std, (name, q)
            assert mean_cell[1] == f"{want.mean:.{digits}f}"
    # the per-layer table: one row per layer; the averaged table holds Report.averages()
    assert len(page.tables["layers"]) == len(report.layers())
    avg = report.averages()
    first = page.tables["averages"][0]
    assert float(first[1][0]["data-v"]) == avg["hidden_angle"]["mean"]
    assert float(first[3][0]["data-v"]) == avg["hidden_angle"]["paper_pm"]


def test_the_paper_rows_have_one_home(reports, saved):
    """tables.md and report.html print PAPER_ROWS beside the model, with SD and the random baseline."""
    report = reports["llama"]
    tmp_path = saved["llama"][0]
    md = (tmp_path / "tables.md").read_text(encoding="utf-8")
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    row = summary(report)
    mine = f"{row['hidden_angle']['mean']:.2f} ± {row['hidden_angle']['sd']:.2f}"
    for text in (md, html):
        for p in PAPER_ROWS:
            assert f"{p.model} (paper)" in text and f"{p.hidden_angle:.2f}" in text
        assert mine in text and f"90 ± {row['baseline_sd']:.2f}" in text
    summary_rows = Page(html).tables["summary"]
    assert len(summary_rows) == 1 + len(PAPER_ROWS)
    assert summary_rows[0][0][1] == "tiny-llama (geonorm)"


def test_run_section_says_what_the_run_was(reports):
    report = Report.from_dict(reports["llama"].to_dict())
    report.meta.update(partial=True, device="cpu", geonorm_version="9.9.9", date="2030-01-02 03:04 UTC")
    from geonorm_core.analysis.report_html import render_report

    text = render_report(report)
    assert "partial" in text and "9.9.9" in text and "2030-01-02 03:04 UTC" in text
    kv = [c[1] for r in Page(text).tables["run"] for c in r]  # key/value rows: <th> key, <td> value
    for value in ("tiny-llama", "LlamaForCausalLM", "RMSNorm", f"{report.tokens:,}", "float32", "cpu"):
        assert value in kv, value


def test_reports_without_layers_still_get_a_page(tmp_path):
    import numpy as np

    from geonorm_core.dumps.reading import analyze_dump

    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32))
    report = analyze_dump(str(tmp_path / "x.npy"))
    paths = report.save(tmp_path / "out")
    page = Page((tmp_path / "out" / "report.html").read_text(encoding="utf-8"))
    assert len(page.tables["sites"]) == len(report.sites) and str(tmp_path / "out" / "report.html") in paths


def test_notebook_views(reports):
    frag = reports["llama"]._repr_html_()
    assert frag.startswith('<div class="gn-frag">') and "tiny-llama (geonorm)" in frag
    assert frag.count("<img") == 1 and "<script" not in frag
    from geonorm_core.experiments.monitor import Timeline

    tl = Timeline(meta={"model": "LlamaForCausalLM", "every": 2, "run": "t"},
                  reports={0: reports["llama"], 2: reports["llama"]}, scalars={"loss": {0: 4.5, 2: None}})
    view = tl._repr_html_()
    page = Page(view)
    assert "t — 2 recorded steps" in view and view.count("<img") == 1
    rows = page.tables["t0"]
    assert [r[0][1] for r in rows] == ["0", "2"] and rows[0][1][1] == "4.5000" and rows[1][1][1] == "–"
    assert Timeline(meta={"every": 3})._repr_html_().count("nothing recorded") == 1


# -- comparisons ---------------------------------------------------------------------------------------

def test_relative_depth_is_layer_over_layers(reports):
    (stack, x, rows), = depth_series(reports["gpt2-4"])
    assert stack == "" and list(x) == [0.0, 0.25, 0.5, 0.75] and len(rows) == 4


def test_compare_writes_html_png_markdown_csv(reports, tmp_path):
    comp = gn.compare([reports["llama"], reports["gpt2"]])
    paths = comp.save(tmp_path)
    names = {p.rsplit("/", 1)[-1] for p in paths}
    assert names == {"compare.csv", "compare.html", "compare.md", "compare_angle.png", "compare_gap.png",
                     "compare_layers.csv", "compare_norm.png", "compare_rotation.png"}
    with open(tmp_path / "compare.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows[:2]] == ["tiny-llama", "tiny-gpt2"] and len(rows) == 2 + len(PAPER_ROWS)
    assert float(rows[0]["hidden_angle_mean"]) == summary(reports["llama"])["hidden_angle"]["mean"]
    assert rows[2]["source"] == "paper" and rows[2]["hidden_angle_sd"] == ""
    with open(tmp_path / "compare_layers.csv", encoding="utf-8") as f:
        long = list(csv.DictReader(f))
    depth = {(r["model"], r["layer"]): float(r["relative_depth"]) for r in long}
    assert depth[("tiny-gpt2", "1")] == 0.5
    page = Page((tmp_path / "compare.html").read_text(encoding="utf-8"))
    assert external_references(page) == []
    assert [r[0][1] for r in page.tables["summary"][:2]] == ["tiny-llama (geonorm)", "tiny-gpt2 (geonorm)"]
    assert len([a for t, a in page.tags if t == "img"]) == 4
    assert comp.notes() == [] and "Note" not in (tmp_path / "compare.md").read_text(encoding="utf-8")


def test_compare_notes_what_was_measured_differently(reports):
    comp = compare([reports["gpt2"], reports["gpt2-4"]])
    notes = comp.notes()
    assert any("first token" in n and "tiny-gpt2: included" in n and "tiny-gpt2-4: excluded" in n for n in notes)
    assert any("histogram bins" in n and "180" in n and "90" in n for n in notes)
    html = comp.to_html()
    assert html.count('class="note"') == len(notes) >= 2
    assert all(f"> **Note.** {n}" in comp.to_markdown() for n in notes)


def test_compare_labels_and_errors(reports, tmp_path):
    comp = compare([reports["gpt2"], reports["gpt2"]])
    assert comp.labels == ["tiny-gpt2 #1", "tiny-gpt2 #2"]
    assert compare([reports["gpt2"]], labels=["A"]).labels == ["A"]
    with pytest.raises(ValueError, match="labels: need 2"):
        compare([reports["gpt2"], reports["llama"]], labels=["A"])
    with pytest.raises(ValueError, match="at least one"):
        compare([])
    with pytest.raises(FileNotFoundError, match="no report.json"):
        load_report(tmp_path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a geonorm report"):
        load_report(tmp_path / "bad.json")


def test_a_model_and_its_conversion_compare_with_the_gap_at_zero(tmp_path):
    """The conversion's point in one command: its LN-RMS gap is ~0 and its stream is orthogonal to 1."""
    from geonorm_core.experiments.convert import to_rmsnorm

    model = tiny("gpt2", n_layer=3)
    a = analyze(model, batches(), meta={"model_name": "gpt2"})
    b = analyze(to_rmsnorm(model), batches(), meta={"model_name": "gpt2-rms"})
    comp = compare([a, b])
    before, after = comp.summaries()
    assert after["norm"] == "RMSNorm" and before["norm"] == "LayerNorm"
    assert before["gap1"]["mean"] > 1e-3 and after["gap1"]["mean"] < 1e-5
    assert abs(after["hidden_angle"]["mean"] - 90) < 1e-3
    assert "| gpt2-rms (geonorm) | RMSNorm" in comp.to_markdown()


def test_cli_compare(reports, tmp_path, capsys):
    for key in ("llama", "gpt2-4"):
        reports[key].save(tmp_path / key, figures=False)
    out = tmp_path / "cmp"
    code = main(["compare", str(tmp_path / "llama"), str(tmp_path / "gpt2-4" / "report.json"), "--out", str(out),
                 "--label", "L", "--label", "G"])
    cap = capsys.readouterr()
    assert code == 0 and (out / "compare.html").exists() and (out / "compare_angle.png").exists()
    assert "| L (geonorm) |" in cap.out and "note: The reports differ in first token" in cap.err
    assert "wrote 8 files" in cap.out


@pytest.mark.parametrize("argv, code, message", [
    (["one"], 2, "at least two reports"),
    (["a", "b", "--label", "x"], 2, "--label: given 1 times for 2 reports"),
    (["MISSING", "MISSING2"], 2, "MISSING: no such folder or file"),
])
def test_cli_compare_errors(argv, code, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *argv, "--out", str(tmp_path / "o")]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("geonorm compare: error: ") and message in err and "\n" not in err


def test_cli_compare_bad_report_is_a_data_error(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps({"meta": {}}))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o")]) == 1
    assert "not a geonorm report" in capsys.readouterr().err


def test_summary_of_partial_and_nan_free(reports):
    report = Report.from_dict(reports["gpt2"].to_dict())
    report.meta["partial"] = True
    row = summary(report)
    assert row["partial"] and row["norm"] == "LayerNorm" and math.isfinite(row["baseline_sd"])
    assert "[partial]" in compare([report]).to_markdown()


def test_docs_screenshots_exist_and_are_small():
    """docs/report.md shows a screenshot of each page (report, comparison), each under 300 KB."""
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent / "docs"
    shots = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", (docs / "report.md").read_text(encoding="utf-8"))
    assert {"report_page.png", "compare_page.png"} <= set(shots)
    for name in shots:
        assert 10_000 < (docs / name).stat().st_size < 300_000, name
