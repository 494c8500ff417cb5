"""`flowdpo report`: the progressive-validation-accuracy figure and a markdown/JSON summary of a run.

Everything is read from the run's object store (no model, no torch):

- `results/shard-*.jsonl`: per-example outcomes of the trained flow and of the baselines;
- `trainer/state/LATEST.json` -> the trainer state, whose `consumed` list gives the order in which the
  trainer counted the shards (the order of progressive validation, paper Sec. "progressive validation");
- `progress.json` / the trainer state: pairs, adapter versions, trainer steps, last loss, timing;
- `spec.yaml`: run name and model.

Progressive validation accuracy (Deng & Mineiro, Flow-DPO): Acc_prog(N) = 1/N sum_{i<=N} correct_i, where
example i is answered by the flow *before* it is trained on. The baselines (untrained flow, zero-shot
single model) are scored on the same examples and drawn as cumulative curves too (paper Figs. 3-4).

After `flowdpo compile` + `flowdpo eval`, the report also carries the compile table (paper Table 1:
0-shot, SFT on ground-truth / self-generated / flow traces) as `compile.png`, a markdown section and a
`compile` key in report.json (flowdpo/report/compile_table.py).

With the flow rows evaluated (`compile.evaluation.flowRows`), the report opens with the held-out endpoints:
the final trained flow minus the untrained flow with its clustered-bootstrap interval, how each flow's answers
end, and the Stop adapter's ROC curves (`endpoints.png`, flowdpo/report/endpoints.py).

Outputs `report/progress.png`, `report/behaviour.png` (how the flow's answers end, per quarter of training),
`report/report.md`, `report/report.json` (+ `report/compile.png`, `report/endpoints.png`) in the store and in
a local folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from flowdpo.report.numbers import collect, compute
from flowdpo.report.render import BEHAVIOUR_FIGURE, render_behaviour_figure, render_figure, render_markdown
from flowdpo.storage.layout import RunLayout
from flowdpo.storage.store import ObjectStore

FIGURE, MARKDOWN, JSON_NAME = "progress.png", "report.md", "report.json"


def write_report(store: ObjectStore, out_dir: Path | None = None) -> dict[str, str]:
    """Write progress.png, report.md and report.json under `report/` in the store and in a local folder.

    Local folder: `out_dir` if given, else `<local run folder>/report` for a file:// store, else
    `./<run>-report`. Returns local paths: {"markdown", "figure", "json"} (+ "behaviourFigure" from 4
    examples on, "compileFigure" and "endpointsFigure" once the run is evaluated). ValueError if nothing to
    report.
    """
    from flowdpo.report.compile_table import FIGURE as COMPILE_FIGURE
    from flowdpo.report.compile_table import collect_compile, render_compile_figure
    from flowdpo.report.endpoints import FIGURE as ENDPOINTS_FIGURE
    from flowdpo.report.endpoints import collect_endpoints, render_endpoints_figure

    data = collect(store)
    numbers = compute(data)
    numbers["compile"] = collect_compile(store)
    numbers["endpoints"] = collect_endpoints(store, numbers["compile"])
    png = render_figure(data["rows"], numbers)
    md = render_markdown(numbers)
    files = {FIGURE: png}
    if numbers["behaviour"]:
        files[BEHAVIOUR_FIGURE] = render_behaviour_figure(numbers["behaviour"], numbers["run"])
    if numbers["compile"] is not None:
        files[COMPILE_FIGURE] = render_compile_figure(numbers["compile"], numbers["run"])
    if numbers["endpoints"] is not None:
        files[ENDPOINTS_FIGURE] = render_endpoints_figure(numbers["endpoints"], numbers["run"])
    js = (json.dumps(numbers, indent=1, sort_keys=True) + "\n").encode()
    files.update({MARKDOWN: md.encode(), JSON_NAME: js})
    for name, blob in files.items():
        store.put(f"{RunLayout.report_dir}/{name}", blob)

    if out_dir is not None:
        local = Path(out_dir)
    elif store.local_root is not None:
        local = store.local_root / RunLayout.report_dir
    else:
        local = Path.cwd() / f"{numbers['run']}-report"
    local = local.expanduser().resolve()
    local.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        path = local / name
        if not (path.exists() and path.read_bytes() == blob):
            path.write_bytes(blob)
    out = {"markdown": str(local / MARKDOWN), "figure": str(local / FIGURE), "json": str(local / JSON_NAME)}
    for key, name in (
        ("behaviourFigure", BEHAVIOUR_FIGURE),
        ("compileFigure", COMPILE_FIGURE),
        ("endpointsFigure", ENDPOINTS_FIGURE),
    ):
        if name in files:
            out[key] = str(local / name)
    return out
