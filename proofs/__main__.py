"""``python -m proofs``: prove every identity, reject every negative control, cross-check the core.

Prints a table (id, statement, scope, status, seconds); ``--json`` for machines, ``--latex`` for a
document with each statement rendered by sympy's LaTeX printer, ``--markdown`` for the catalogue of
statements that ``docs/identities.md`` holds (nothing is proved for it). Exit code 1 when anything fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time

from . import controls, identities
from .toolkit import timed

STATEMENT_WIDTH = 70


def run(crosscheck: bool = True, only: set[str] | None = None) -> dict:
    """Run everything and return the report as a dict (the --json output)."""
    t_start = time.perf_counter()
    report: dict = {"identities": [], "controls": [], "crosschecks": [], "crosscheck_skipped": None}

    for ident in identities():
        if only and ident.id not in only:
            continue
        ok, secs, err = timed(ident.prove)
        report["identities"].append({
            "id": ident.id, "statement": ident.statement, "scope": ident.scope,
            "status": "proved" if ok is True else "FAILED", "seconds": round(secs, 3),
            "family": ident.family, "method": ident.method, "latex": ident.latex(), "error": err,
        })

    for ctl in controls():
        if only and ctl.of not in only and ctl.id not in only:
            continue
        t0 = time.perf_counter()
        err = None
        try:
            accepted = ctl.accepted()
            witness = None if accepted else ctl.refute()
        except Exception as e:
            accepted, witness, err = True, None, f"{type(e).__name__}: {e}"
        if accepted:
            status = "ACCEPTED"            # the checker proved a false statement: a failure
        elif witness is None:
            status = "NO WITNESS"          # not proved, but no exact counterexample found either
        else:
            status = "rejected"
        report["controls"].append({
            "id": ctl.id, "of": ctl.of, "statement": ctl.statement, "scope": "all d",
            "status": status, "seconds": round(time.perf_counter() - t0, 3),
            "counterexample": witness, "latex": ctl.latex(), "error": err,
        })

    if crosscheck:
        from . import crosscheck as cc

        available, why = cc.core_available()
        if not available:
            report["crosscheck_skipped"] = why
        else:
            for ident in identities():
                if only and ident.id not in only:
                    continue
                per_dtype = [cc.run_check(ident.id, dt) for dt in cc.DTYPES]
                report["crosschecks"].append({
                    "id": ident.id, "statement": ident.statement, "scope": "numeric",
                    "status": "ok" if all(r.ok for r in per_dtype) else "FAIL",
                    "seconds": round(sum(r.seconds for r in per_dtype), 3),
                    "dtypes": {r.dtype: {"ok": r.ok, "worst_error_over_tolerance": r.worst,
                                         "error": r.error,
                                         "failing": [m for m in r.measurements if not m[1] <= 1.0]}
                               for r in per_dtype},
                })

    report["ok"] = (
        all(r["status"] == "proved" for r in report["identities"])
        and all(r["status"] == "rejected" for r in report["controls"])
        and all(r["status"] == "ok" for r in report["crosschecks"])
    )
    report["seconds"] = round(time.perf_counter() - t_start, 3)
    return report


# --------------------------------------------------------------------------------------------------
def _table(rows: list[dict], title: str, statement_key=lambda r: r["statement"]) -> list[str]:
    head = f"{'id':<5} {'statement':<{STATEMENT_WIDTH}} {'scope':<8} {'status':<10} {'seconds':>7}"
    out = [title, head, "-" * len(head)]
    for r in rows:
        lines = textwrap.wrap(statement_key(r), STATEMENT_WIDTH) or [""]
        out.append(f"{r['id']:<5} {lines[0]:<{STATEMENT_WIDTH}} {r['scope']:<8} {r['status']:<10} "
                   f"{r['seconds']:>7.2f}")
        out.extend(f"{'':<5} {line}" for line in lines[1:])
    return out


def format_table(report: dict) -> str:
    out = _table(report["identities"], "Identities of the geometry, proved for symbolic d")
    out.append("")
    out += _table(report["controls"], "Negative controls: wrong variants the same checker must reject",
                  lambda r: f"[{r['of']}] {r['statement']}"
                  + (f"  (witness: d={r['counterexample']['d']}, difference {r['counterexample']['difference']})"
                     if r["counterexample"] else ""))
    out.append("")
    if report["crosscheck_skipped"]:
        out.append(f"Numeric cross-checks with geonorm_core: skipped ({report['crosscheck_skipped']})")
    elif report["crosschecks"]:
        out += _table(report["crosschecks"],
                      "Numeric cross-checks with geonorm_core (worst error / dtype tolerance; ≤ 1 passes)",
                      lambda r: "  ".join(f"{dt}: {v['worst_error_over_tolerance']:.3g}"
                                          + ("" if v["ok"] else " FAIL") for dt, v in r["dtypes"].items()))
    out.append("")
    n_id = len(report["identities"])
    n_ok = sum(r["status"] == "proved" for r in report["identities"])
    n_rej = sum(r["status"] == "rejected" for r in report["controls"])
    n_cc = sum(r["status"] == "ok" for r in report["crosschecks"])
    out.append(f"{n_ok}/{n_id} identities proved, {n_rej}/{len(report['controls'])} controls rejected, "
               f"{n_cc}/{len(report['crosschecks'])} cross-checks ok — "
               f"{'OK' if report['ok'] else 'FAILED'} in {report['seconds']:.1f} s")
    return "\n".join(out)


def format_latex(report: dict) -> str:
    def item(r, extra=""):
        scope = r["scope"].replace("≤", r"$\le$")
        return (f"\\item[{r['id']}] ({scope}; {r['status']}{extra}; "
                f"{r['seconds']:.2f}\\,s)\n\\[ {r['latex']} \\]")

    parts = [
        r"\documentclass{article}",
        r"\usepackage{amsmath,amssymb}",
        r"\usepackage[margin=2cm]{geometry}",
        r"\begin{document}",
        r"\section*{The geometry of LayerNorm and RMSNorm: identities proved for symbolic $d$}",
        r"\begin{description}",
        *(item(r) for r in report["identities"]),
        r"\end{description}",
        r"\section*{Negative controls (each must be rejected)}",
        r"\begin{description}",
        *(item(r, f", wrong variant of {r['of']}") for r in report["controls"]),
        r"\end{description}",
        r"\end{document}",
    ]
    return "\n".join(parts) + "\n"


def format_markdown() -> str:
    """The statements as Markdown tables: what ``docs/identities.md`` reproduces (and a test keeps equal)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    out = ["| id | family | statement | scope |", "|---|---|---|---|"]
    out += [f"| {i.id} | {i.family} | {cell(i.statement)} | {cell(i.scope)} |" for i in identities()]
    out += ["", "| control | wrong variant of | statement |", "|---|---|---|"]
    out += [f"| {c.id} | {c.of} | {cell(c.statement)} |" for c in controls()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m proofs", description=__doc__.split("\n")[0])
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--latex", action="store_true", help="print a LaTeX document of the statements")
    out.add_argument("--markdown", action="store_true",
                     help="print the statements as Markdown tables (docs/identities.md) and prove nothing")
    parser.add_argument("--no-crosscheck", action="store_true",
                        help="skip the numeric cross-checks with geonorm_core")
    parser.add_argument("--only", default=None, help="comma-separated identity ids, e.g. G5,G9")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",")} if args.only else None
    if args.markdown:
        print(format_markdown(), end="")
        return 0

    report = run(crosscheck=not args.no_crosscheck, only=only)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    elif args.latex:
        print(format_latex(report), end="")
    else:
        print(format_table(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
