"""report.html: one self-contained page per run, and the compact views notebooks show.

The page needs nothing but itself: the styles and the script are inline, the figures are SVG
inlined as ``data:`` URIs, and a Content-Security-Policy forbids every fetch, so it opens offline
and can be mailed.  The tables are plain HTML tables (the page reads with scripts disabled and in
print); the script only adds sorting by any column and a filter by role.  Every number of the
per-site table carries its full value in ``data-v`` (what the sort uses), so the page's numbers can
be checked against report.json.

:func:`render_report` gives the page, :func:`report_fragment` the compact view of
``Report._repr_html_``, :func:`timeline_fragment` the training monitor's.  :func:`page`,
:func:`figure_img`, :func:`summary_table` are shared with :mod:`geonorm_core.analysis.compare`.
"""
from __future__ import annotations

import datetime
import html
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from .paper import HEADERS, cells, model_label, norm_kind, paper_summaries, summary

#: The per-site table's numeric columns: (quantity, header, digits).
SITE_COLUMNS = (("angle_hidden", "angle hidden (°)", 2), ("angle_post", "angle post (°)", 2),
                ("norm_hidden", "‖hidden‖", 2), ("norm_post", "‖post‖", 2), ("rotation", "rotation (°)", 2),
                ("max_abs_hidden", "max abs(hidden)", 2), ("ln_rms_gap", "LN–RMS gap", 4))

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
:root{--ink:#1b1f24;--mute:#57606a;--line:#d0d7de;--soft:#f6f8fa;--accent:#0b5cad;--hi:#fff8c5}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:var(--ink);background:#fff}
main,header>.wrap,footer{max-width:1240px;margin:0 auto;padding:0 24px}
header{background:linear-gradient(180deg,#eef4fb,#fff);border-bottom:1px solid var(--line);padding:18px 0 14px}
.kicker{margin:0;color:var(--accent);font-weight:600;letter-spacing:.06em;text-transform:uppercase;font-size:12px}
h1{margin:2px 0 2px;font-size:28px;line-height:1.2}
h2{font-size:20px;margin:28px 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:16px;margin:18px 0 6px}
.sub{margin:0 0 12px;color:var(--mute)}
.badge{display:inline-block;vertical-align:middle;font-size:12px;font-weight:600;padding:2px 8px;
 border-radius:10px;border:1px solid;margin-left:8px}
.badge.complete{color:#116329;border-color:#4ac26b;background:#dafbe1}
.badge.partial{color:#9a6700;border-color:#d4a72c;background:#fff8c5}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 12px;background:#fff}
.card .k{color:var(--mute);font-size:12.5px}.card .v{font-size:22px;font-weight:650;white-space:nowrap}
.card .n{color:var(--mute);font-size:12.5px}
.lead{display:grid;grid-template-columns:minmax(0,1.6fr) minmax(0,1fr);gap:18px;align-items:start}
@media (max-width:900px){.lead{grid-template-columns:1fr}}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:14px}
figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:6px;background:#fff;break-inside:avoid}
figure img{display:block;width:100%;height:auto}
figcaption{font-size:12.5px;color:var(--mute);padding:4px 4px 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:var(--soft);font-weight:600;position:sticky;top:0;white-space:normal;vertical-align:bottom}
td.t,th.t{text-align:left}
tr.mine td{background:var(--hi);font-weight:600}
tr.paper td{color:#3d444d}
table.kv td,table.kv th{text-align:left}
table.kv th{background:none;position:static;color:var(--mute);font-weight:500;padding:2px 8px}
table.kv td{padding:2px 8px;white-space:normal}
section#headline{margin-top:16px}
.note{border-left:4px solid #d4a72c;background:#fff8c5;padding:8px 12px;margin:10px 0;border-radius:4px}
.muted{color:var(--mute);font-size:13px}
th button{all:unset;cursor:pointer}
th button:focus-visible{outline:2px solid var(--accent)}
th[aria-sort=ascending] button::after{content:"\\A0\\25B2"}
th[aria-sort=descending] button::after{content:"\\A0\\25BC"}
th button::after{content:"\\A0\\21C5";color:#8c959f}
#summary td:first-child,#runs td:first-child{white-space:normal;min-width:11em}
#summary th{min-width:4.5em}
.controls{margin:6px 0 8px;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
footer{color:var(--mute);font-size:12.5px;padding-top:8px;padding-bottom:30px}
@media print{
 body{font-size:10.5pt}header{background:none;padding:0}
 .controls,th button::after{display:none}
 th{position:static}.figs{grid-template-columns:1fr 1fr}.lead{grid-template-columns:1fr}
 h2{break-after:avoid}table,figure{break-inside:avoid}.scroll{overflow:visible}
 tr.mine td{background:none;text-decoration:underline}
 table{font-size:7.5pt}th,td{white-space:normal;padding:2px 3px}#summary td:first-child{min-width:0}
 #sites{font-size:6.8pt}#sites td:first-child{word-break:break-all;min-width:7em}main,header>.wrap,footer{padding:0}
 #sites :is(th,td):is(:nth-child(4),:nth-child(5),:nth-child(6)){display:none}
}
"""

JS = r"""
(function(){
  function key(td){ if(!td) return ''; var v=td.getAttribute('data-v');
    if(v!==null){ var f=parseFloat(v); return isNaN(f)?-Infinity:f; } return td.textContent.trim().toLowerCase(); }
  function sortBy(table, col, th){
    var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows);
    var dir=th.getAttribute('aria-sort')==='ascending'?'descending':'ascending';
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',dir);
    var s=dir==='ascending'?1:-1;
    rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
      if(typeof x!==typeof y){x=String(x);y=String(y);} return x<y?-s:x>y?s:0;});
    rows.forEach(function(r){body.appendChild(r);});
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'),function(table){
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
      var b=document.createElement('button'); b.type='button';
      while(th.firstChild){b.appendChild(th.firstChild);} th.appendChild(b);
      b.addEventListener('click',function(){sortBy(table,i,th);});
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll('table[data-filter]'),function(table){
    var attr=table.getAttribute('data-filter'), rows=Array.prototype.slice.call(table.tBodies[0].rows);
    var values=[]; rows.forEach(function(r){var v=r.getAttribute(attr); if(values.indexOf(v)<0) values.push(v);});
    var box=document.createElement('div'); box.className='controls';
    var label=document.createElement('label'); label.textContent='Role: ';
    var sel=document.createElement('select'); sel.id=table.id+'-filter';
    [['','all roles']].concat(values.map(function(v){return [v,v];})).forEach(function(o){
      var opt=document.createElement('option'); opt.value=o[0]; opt.textContent=o[1]; sel.appendChild(opt);});
    label.appendChild(sel); box.appendChild(label);
    var count=document.createElement('span'); count.className='muted'; count.setAttribute('aria-live','polite');
    box.appendChild(count);
    function apply(){ var n=0; rows.forEach(function(r){var show=!sel.value||r.getAttribute(attr)===sel.value;
      r.hidden=!show; if(show) n++;}); count.textContent='showing '+n+' of '+rows.length+' sites'; }
    sel.addEventListener('change',apply); apply();
    table.parentNode.parentNode.insertBefore(box,table.parentNode);
  });
})();
"""


# -- building blocks -------------------------------------------------------------------------------

def esc(x: Any) -> str:
    """Text for HTML."""
    return html.escape(str(x), quote=True)


def figure_img(fig, alt: str, caption: str = "", *, cls: str = "") -> str:
    """A matplotlib figure as an inline SVG ``<img>`` in a ``<figure>`` (the figure is closed)."""
    import matplotlib
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "geonorm"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    # percent-encoding only what a data: URI in a quoted attribute needs is ~25% smaller than base64
    uri = "data:image/svg+xml;charset=utf-8," + quote(buf.getvalue(), safe=" :/=;,'()!*~.-_+?@$[]{}|^`")
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    c = f' class="{cls}"' if cls else ""
    return f'<figure><img{c} src="{uri}" alt="{esc(alt)}">{cap}</figure>'


def num(value: Any, digits: int = 2, *, cls: str = "") -> str:
    """A numeric ``<td>``: the rounded value shown, the full one in ``data-v`` (sorting, checking)."""
    c = f' class="{cls}"' if cls else ""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f'<td{c} data-v="nan">–</td>'
    return f'<td{c} data-v="{float(value)!r}">{float(value):.{digits}f}</td>'


def table(headers: Sequence[str], rows: Iterable[str], *, id: str = "", sortable: bool = False,
          extra: str = "", caption: str = "", text_columns: int = 1) -> str:
    """An HTML table from its header texts and ready ``<tr>`` rows, in a horizontal scroller; the
    first ``text_columns`` headers align left, as their text cells do."""
    attrs = (f' id="{id}"' if id else "") + (' class="sortable"' if sortable else "") + extra
    head = "".join(f'<th scope="col"{" class=t" if i < text_columns else ""}>{esc(h)}</th>'
                   for i, h in enumerate(headers))
    cap = f"<caption class=muted>{caption}</caption>" if caption else ""
    return (f'<div class="scroll"><table{attrs}>{cap}<thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>")


def summary_table(rows: Sequence[dict], *, id: str = "summary") -> str:
    """The paper's Tables 2-4 side by side: measured rows highlighted, then the paper's rows."""
    trs = []
    for r in rows:
        cls = "mine" if r["source"] == "geonorm" else "paper"

        def mean(key, r=r):
            return r[key]["mean"] if r.get(key) else None

        # what each numeric cell sorts by (its text is "mean ± SD", "a → b", "a / b")
        keys = [None, None, r["d"], r["layers"], r["tokens"], mean("hidden_angle"), mean("post1_angle"),
                mean("post2_angle"), r["baseline_sd"], mean("hidden_norm"), mean("rotation1"), mean("gap1")]
        tds = "".join(f'<td class="t">{esc(c)}</td>' if k is None and i < 2 else
                      f'<td data-v="{"nan" if k is None else repr(float(k))}">{esc(c)}</td>'
                      for i, (c, k) in enumerate(zip(cells(r), keys)))
        trs.append(f'<tr class="{cls}" data-model="{esc(r["model"])}">{tds}</tr>')
    return table(HEADERS, trs, id=id, sortable=True, text_columns=2)


SUMMARY_NOTE = ("Angles: mean over layers of the per-layer mean angle with the uniform vector 1, ± the mean "
                "over layers of the per-token SD. Random baseline: a rotation-invariant vector in R<sup>d</sup> "
                "is at 90° ± this SD from 1. Norms: hidden → output of the block's first norm; rotations: "
                "hidden ↔ each norm's output. Paper rows: 1M tokens of Wikipedia, as published (the paper's "
                "LN–RMS gap is not known).")


def page(title: str, body: str, *, script: bool = True) -> str:
    """A complete, self-contained HTML document (inline CSS and script, no fetch allowed)."""
    js = f"<script>{JS}</script>" if script else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="generator" content="geonorm {esc(_version())}">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}{js}</body></html>\n")


def _version() -> str:
    from ..runtime import __version__

    return __version__


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _int(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else esc(v)


def _status(meta: dict) -> str:
    return ('<span class="badge partial">partial</span>' if meta.get("partial")
            else '<span class="badge complete">complete</span>')


def run_rows(report) -> list[tuple[str, str]]:
    """(label, HTML) of what the run was: model, tokens, dtype, device, version, date, status."""
    m = report.meta
    rows = report.layers()
    items = [("model", esc(m.get("model_name") or m.get("model", "–"))), ("model class", esc(m.get("model", "–"))),
             ("norm", esc(norm_kind(report))), ("width d", esc(rows[0]["d"] if rows else "–")),
             ("layers", str(len(rows))), ("norm sites", str(len(report.sites))), ("tokens", _int(report.tokens)),
             ("status", "partial (interrupted; the numbers so far)" if m.get("partial") else "complete"),
             ("dtype", esc(m.get("dtype", "–"))), ("device", esc(m.get("device", "–"))),
             ("text", esc(m.get("text", "–"))),
             ("sequence length × batch", f"{esc(m.get('seq_len', '–'))} × {esc(m.get('batch_size', '–'))}"),
             ("first token", "excluded" if m.get("exclude_first_token") else "included"),
             ("histogram bins", esc(m.get("bins", "–"))),
             ("geonorm", esc(m.get("geonorm_version") or f"{_version()} (rendered with)")),
             ("date", esc(m.get("date") or f"{_now()} (page written)"))]
    return [(k, v) for k, v in items if v not in ("–", "– × –")]  # what the run did not record


def _cards(report, row: dict) -> str:
    first, second = report.block_labels()

    def card(k: str, v: str, n: str) -> str:
        return f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div><div class="n">{n}</div></div>'

    def pm(q, d=2):
        return "–" if q is None else f"{q['mean']:.{d}f}° <small>± {q['sd']:.{d}f}</small>"

    base = row["baseline_sd"]
    out = [card("angle of hidden states with 1", pm(row["hidden_angle"]),
                f"random baseline 90° ± {base:.2f}° (d={row['d']})" if math.isfinite(base) else "")]
    if row["hidden_norm"] and row["post1_norm"]:
        out.append(card(f"‖hidden‖ → ‖post-{first}‖",
                        f"{row['hidden_norm']['mean']:.1f} → {row['post1_norm']['mean']:.1f}",
                        "mean L2 norm over layers (Table 3)"))
    if row["rotation1"]:
        r2 = f" / {row['rotation2']['mean']:.1f}°" if row["rotation2"] else ""
        out.append(card(f"rotation {first}{' / ' + second if r2 else ''}", f"{row['rotation1']['mean']:.1f}°{r2}",
                        "hidden ↔ norm output (Table 4)"))
    if row["gap1"]:
        out.append(card(f"LN–RMS gap at {first}", f"{row['gap1']['mean']:.3f}",
                        "‖LN(x) − RMS(x)‖ / ‖LN(x)‖: what mean subtraction changes"))
    return '<div class="cards">' + "".join(out) + "</div>"


def averages_table(report) -> str:
    """Each per-layer column averaged over layers: mean, SD over tokens, the paper's ±."""
    first, second = report.block_labels()
    labels = {"hidden_angle": "angle with 1, hidden (Table 2)", "post1_angle": f"angle with 1, post-{first} (Table 2)",
              "post2_angle": f"angle with 1, post-{second} (Table 2)", "hidden_norm": "L2 norm, hidden (Table 3)",
              "post1_norm": f"L2 norm, post-{first} (Table 3)",
              "rotation1": f"rotation hidden ↔ post-{first} (Table 4)",
              "rotation2": f"rotation hidden ↔ post-{second} (Table 4)", "gap1": f"LN–RMS gap at {first}",
              "max_abs": "max abs(hidden)"}
    avg = report.averages()
    trs = []
    for key, label in labels.items():
        v = avg.get(key)
        if v:
            dg = 4 if key == "gap1" else 2
            trs.append(f'<tr><td class="t">{esc(label)}</td>{num(v["mean"], dg)}{num(v["sd"], dg)}'
                       f'{num(v["paper_pm"], dg)}</tr>')
    return table(("quantity", "mean", "SD over tokens", "paper ±"), trs, id="averages")


def layers_table(report) -> str:
    """The per-layer columns (mean ± SD over tokens), the random baseline and the KS distance."""
    first, second = report.block_labels()
    heads = ("layer", "angle hidden (°)", "± SD", f"post-{first} (°)", f"post-{second} (°)", "baseline SD",
             "KS", "outside 99.9%", "‖hidden‖", f"‖post-{first}‖", f"rotation {first}", f"rotation {second}",
             "LN–RMS gap")
    trs = []
    for r in report.layers():
        name = f"{r['stack'][:3]}.{r['layer']}" if r["stack"] else str(r["layer"])

        def m(key, d=2, r=r):
            return num(r[key][0] if r.get(key) else None, d)

        sd = r["hidden_angle"][1] if r.get("hidden_angle") else None
        out = r["outside"] * 100 if r["outside"] is not None and math.isfinite(r["outside"]) else None
        trs.append(f'<tr><td class="t" data-v="{r["layer"]}">{esc(name)}</td>{m("hidden_angle")}{num(sd)}'
                   f'{m("post1_angle")}{m("post2_angle")}{num(r["baseline_sd"])}{num(r["ks"], 3)}{num(out)}'
                   f'{m("hidden_norm", 1)}{m("post1_norm", 1)}{m("rotation1")}{m("rotation2")}{m("gap1", 4)}</tr>')
    return table(heads, trs, id="layers", sortable=True)


def sites_table(report) -> str:
    """One row per norm site: where it is, what it is, and mean (± SD) of every quantity; sortable, filterable."""
    heads = ["site", "layer", "role", "kind", "d", "tokens"]
    for _, h, _ in SITE_COLUMNS:
        heads += [h, "SD"]
    trs = []
    for name, s in report.sites.items():
        m = s.meta
        role = m.get("role") or "–"
        layer = m.get("layer")
        qs = [s.quantities.get(q) for q, _, _ in SITE_COLUMNS]  # arrays without outputs have no post values
        cols = "".join(num(v.mean if v is not None and v.count else None, dg)
                       + num(v.std if v is not None and v.count else None, dg)
                       for v, (_, _, dg) in zip(qs, SITE_COLUMNS))
        lay = '<td data-v="nan">–</td>' if layer is None else f'<td data-v="{layer}">{layer}</td>'
        trs.append(f'<tr data-role="{esc(role)}" data-site="{esc(name)}"><td class="t">{esc(name)}</td>{lay}'
                   f'<td class="t">{esc(role)}</td><td class="t">{esc(m.get("kind", "–"))}</td>'
                   f'<td data-v="{m.get("d")}">{esc(m.get("d"))}</td><td data-v="{s.tokens}">{s.tokens:,}</td>'
                   f"{cols}</tr>")
    return table(heads, trs, id="sites", sortable=True, extra=' data-filter="data-role"', text_columns=1)


def _captions(report) -> dict[str, str]:
    first, second = report.block_labels()
    return {"angle_per_layer": f"Angle with the uniform vector 1 of the residual stream (LN1's input) and of the "
                               f"{first}/{second} outputs per layer; bands: ± SD over tokens; grey band: the random "
                               "baseline.",
            "norm_per_layer": f"L2 norm of the residual stream and of the {first} output (log scale; SDs in the "
                              "per-layer table).",
            "rotation_per_layer": "Angle between a hidden state and its norm's output (gain and bias included).",
            "gap_per_layer": "‖LN(x) − RMS(x)‖ / ‖LN(x)‖ with the site's gain: what mean subtraction changes.",
            "angle_histogram": "Distribution over tokens of the angle with 1 at one layer, beside the "
                               "random baseline's Beta density."}


def figures_html(figs: Sequence[tuple[str, Any]], captions: dict[str, str]) -> list[str]:
    """``<figure>`` elements for (file name, figure) pairs, captioned by the name's stem."""
    out = []
    for name, fig in figs:
        stem = name.rsplit(".", 1)[0]
        key = next((k for k in captions if stem.startswith(k)), stem)
        cap = captions.get(key, "")
        out.append(figure_img(fig, alt=stem.replace("_", " "), caption=esc(cap)))
    return out


# -- the pages -------------------------------------------------------------------------------------

def render_report(report, *, figures: Sequence[tuple[str, Any]] | None = None) -> str:
    """report.html: the run, Tables 2-4 beside the paper, the figures, per-layer and per-site tables.

    ``figures``: the (name, figure) pairs of :func:`~geonorm_core.analysis.figures.report_figures`, if already
    drawn (they are closed here); default: drawn here.
    """
    from .figures import report_figures

    if not report.layers():
        return _render_site_only(report)
    row = summary(report)
    label = model_label(report)
    rows = report.layers()
    figs = figures_html(report_figures(report) if figures is None else figures, _captions(report))
    run = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in run_rows(report))
    head = (f'<header><div class="wrap"><p class="kicker">geonorm report · the geometry of normalization layers</p>'
            f"<h1>{esc(label)}{_status(report.meta)}</h1>"
            f'<p class="sub">{esc(report.meta.get("model", ""))} · {esc(row["norm"])} · d={row["d"]} · '
            f"{len(rows)} layers · {len(report.sites)} norm sites · {report.tokens:,} tokens · first token "
            f"{'excluded' if report.meta.get('exclude_first_token') else 'included'}</p>"
            f"{_cards(report, row)}</div></header>")
    partial = ('<p class="note">This run was interrupted: the numbers are those of the tokens counted so far '
               f"({report.tokens:,}).</p>" if report.meta.get("partial") else "")
    body = (head + "<main>" + partial
            + '<section id="headline"><div class="lead">' + figs[0]
            + f'<div><h3>The run</h3><table class="kv" id="run"><tbody>{run}</tbody></table></div></div></section>'
            + '<section id="tables"><h2>Tables 2–4 beside the paper</h2>'
            + summary_table([row] + paper_summaries()) + f'<p class="muted">{SUMMARY_NOTE}</p></section>'
            + '<section id="figures"><h2>Figures</h2><div class="figs">' + "".join(figs[1:]) + "</div></section>"
            + '<section id="averaged"><h2>Averaged over layers</h2>' + averages_table(report)
            + '<p class="muted">Mean of the per-layer means; SD = mean of the per-layer SDs over tokens; paper ± = '
              "√(Σ σ<sub>l</sub>²)/L, the paper's convention (a standard error of the layer average, not a "
              "spread).</p></section>"
            + '<section id="per-layer"><h2>Per layer</h2>' + layers_table(report)
            + '<p class="muted">Mean over tokens (± SD for the hidden angle); baseline SD: the random baseline at '
              "this d; KS: Kolmogorov–Smirnov distance of the angle histogram from the baseline; outside 99.9%: "
              "tokens outside the baseline's 99.9% interval.</p></section>"
            + '<section id="per-site"><h2>Per norm site</h2>' + sites_table(report)
            + '<p class="muted">Mean and SD over tokens at every norm site; click a header to sort.</p></section>'
            + "</main>" + _footer())
    return page(f"geonorm report: {label}", body)


def _render_site_only(report) -> str:
    """A report without layers (arrays, dumps of unnamed sites): the run and the per-site table."""
    label = model_label(report)
    run = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in run_rows(report))
    body = (f'<header><div class="wrap"><p class="kicker">geonorm report</p><h1>{esc(label)}'
            f"{_status(report.meta)}</h1><p class=sub>{len(report.sites)} sites · {report.tokens:,} rows</p></div>"
            '</header><main><section id="per-site"><h2>Per site</h2>' + sites_table(report)
            + '</section><section id="run-info"><h2>The run</h2>'
            + f'<table class="kv" id="run"><tbody>{run}</tbody></table></section></main>'
            + _footer())
    return page(f"geonorm report: {label}", body)


def _footer() -> str:
    return (f"<footer>Written by geonorm {esc(_version())}. Hidden = the residual stream entering the block's "
            "first norm; post = a norm's output with its gain and bias. SD = standard deviation over tokens. "
            "This page is self-contained: it loads nothing.</footer>")


# -- notebooks -------------------------------------------------------------------------------------

FRAGMENT_CSS = (".gn-frag{font-family:system-ui,sans-serif;max-width:900px}.gn-frag table{border-collapse:collapse;"
                "font-size:12.5px;margin:4px 0}.gn-frag th,.gn-frag td{padding:2px 8px;border-bottom:1px solid #ddd;"
                "text-align:right;white-space:nowrap}.gn-frag th:first-child,.gn-frag td:first-child{text-align:left}"
                ".gn-frag tr.mine td{font-weight:600;background:#fff8c5}.gn-frag img{max-width:720px;width:100%}"
                ".gn-frag img.wide{max-width:1100px}.gn-frag figure{margin:4px 0}.gn-frag h4{margin:4px 0}")


def _compact(rows: Sequence[dict]) -> str:
    trs = "".join(f'<tr class="{"mine" if r["source"] == "geonorm" else "paper"}">'
                  + "".join(f"<td>{esc(c)}</td>" for c in cells(r)) + "</tr>" for r in rows)
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADERS)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>"


def report_fragment(report) -> str:
    """The compact view a notebook shows for a Report: one summary row and the angle figure."""
    from .figures import report_figures

    label = model_label(report)
    status = " (partial)" if report.meta.get("partial") else ""
    if not report.layers():
        return (f'<div class="gn-frag"><style>{FRAGMENT_CSS}</style><h4>geonorm report: {esc(label)}{status}</h4>'
                f"<p>{len(report.sites)} sites, {report.tokens:,} rows (no layers: see report.site_table())</p></div>")
    figs = report_figures(report)
    import matplotlib.pyplot as plt

    for _, f in figs[1:]:
        plt.close(f)
    return (f'<div class="gn-frag"><style>{FRAGMENT_CSS}</style><h4>geonorm report: {esc(label)}{status} — '
            f"{report.tokens:,} tokens, {len(report.layers())} layers, {len(report.sites)} norm sites</h4>"
            + _compact([summary(report)]) + figure_img(figs[0][1], alt="angle with 1 per layer") + "</div>")


def timeline_fragment(timeline) -> str:
    """The compact view a notebook shows for a training monitor's Timeline: a row per step and its figure."""
    steps = timeline.steps
    label = esc(timeline.meta.get("run") or timeline.meta.get("model", "model"))
    head = (f'<div class="gn-frag"><style>{FRAGMENT_CSS}</style><h4>geonorm timeline: {label} — {len(steps)} '
            f"recorded steps (every {esc(timeline.meta.get('every', '?'))})</h4>")
    if not steps:
        return head + "<p>nothing recorded yet</p></div>"
    trs = []
    loss = {int(s): v for s, v in timeline.scalars.get("loss", {}).items()}
    for step in steps:
        row = summary(timeline.reports[step])
        a, n, g = row["hidden_angle"], row["hidden_norm"], row["gap1"]
        trs.append(f"<tr><td>{step}</td><td>{_f(loss.get(step), 4)}</td><td>{_f(a and a['mean'])}</td>"
                   f"<td>{_f(a and a['sd'])}</td><td>{_f(n and n['mean'], 1)}</td><td>{_f(g and g['mean'], 4)}</td>"
                   f"<td>{row['tokens']:,}</td></tr>")
    table_ = ("<table><thead><tr><th>step</th><th>loss</th><th>angle hidden (°)</th><th>SD</th><th>‖hidden‖</th>"
              "<th>LN–RMS gap</th><th>tokens</th></tr></thead><tbody>" + "".join(trs) + "</tbody></table>")
    fig = timeline.figure() if hasattr(timeline, "figure") else None
    img = figure_img(fig, alt="geometry over training", cls="wide") if fig is not None else ""
    return head + table_ + img + "</div>"


def _f(v: Any, digits: int = 2) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


__all__ = ["figure_img", "page", "render_report", "report_fragment", "summary_table", "timeline_fragment"]
