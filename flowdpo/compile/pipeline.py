"""`flowdpo compile` as one call: traces of the three sources (equal-data rule), then SFT per source."""

from __future__ import annotations


def compile_run(
    doc, *, require_finished: bool = True, traces_only: bool = False, show_progress: bool = False
) -> dict:
    """Traces of the three sources (equal-data rule), then one SFT model per source. Returns a summary."""
    from flowdpo.compile.common import open_run
    from flowdpo.compile.traces import build_traces

    store = open_run(doc, require_finished=require_finished)
    manifest = build_traces(doc, store, show_progress=show_progress)
    out = {"manifest": manifest, "sft": {}}
    if not traces_only:
        from flowdpo.compile.sft import train_all

        out["sft"] = train_all(doc, store)
    return out
