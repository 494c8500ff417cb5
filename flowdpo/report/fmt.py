"""How report numbers are written, once for every report (run report, compile table, held-out endpoints,
signal check): percentages, point differences, AUCs and the verdict a 95% interval supports."""

from __future__ import annotations

from typing import Any


def pct(x: float | None) -> str:
    """0.532 -> '53.2%'; None -> '-'."""
    return "-" if x is None else f"{100 * x:.1f}%"


def pp(x: float) -> str:
    """A difference of proportions in percentage points, signed: 0.23 -> '+23.0 pp'."""
    return f"{100 * x:+.1f} pp"


def num(x: Any) -> str:
    """A probability or score to three decimals; None -> '-'."""
    return "-" if x is None else f"{x:.3f}"


def auc_text(d: dict | None) -> str:
    """An AUC with its 95% interval when there is one: '0.712 (0.650-0.770)'; '-' when not measured."""
    if not d or d.get("auc") is None:
        return "-"
    ci = d.get("aucCi95")
    return f"{d['auc']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def verdict(ci: list[float] | None, better: str = "better", worse: str = "worse") -> str:
    """How a difference's 95% interval reads (first minus second); the one wording every report uses."""
    if not ci:
        return "no interval (too few questions)"
    if ci[0] > 0:
        return f"the first is {better} (the 95% CI excludes zero)"
    if ci[1] < 0:
        return f"the first is {worse} (the 95% CI excludes zero)"
    return "no measurable difference at this sample size (the 95% CI includes zero)"
