"""The equal-budget table: training runs side by side, with what each cost and what it scores.

    python -m eval --data ../shared/data/val --out runs/eval_budget --methods coarse \\
        --checkpoint airmf=runs/airmf/final.safetensors \\
        --checkpoint sirmf=runs/sirmf/final.safetensors
    python -m eval.budget runs/eval_budget --reference airmf airmf=runs/airmf sirmf=runs/sirmf

Each NAME=RUN pairs a method of a `python -m eval` run (OUT/results.json and OUT/NAME/
scores.json) with the training run that made its weights (RUN/log.jsonl, read by
`airm.training.run_record`): its variant, the samples its steps saw, its wall time summed over
the jobs that made it, and the hardware of each job. Printed as one markdown table: pooled IoU,
mean IoU and mBA on the data, IoU / mBA per source, and the paired bootstrap of mean IoU and mBA
against the reference run (`eval.compare`), then one line that says whether the runs are an
equal budget: the same samples, seed, data and making of the items, or which of these differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from airm.training import RunRecord, run_record, train_config_with_defaults
from eval.compare import compare

# What must match for runs to have had the same budget: how many samples, and which.
BUDGET_FIELDS = (
    "data",
    "seed",
    "init",
    "crop_size",
    "query_size",
    "far_fraction",
    "query_anywhere",
    "paste_fraction",
    "whole_fraction",
    "cascade_fraction",
    "rotate_degrees",
    "lowres_sides",
    "soft_masks",
    "loss",
)


def wall_time(seconds: float | None) -> str:
    if seconds is None:
        return "not logged"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def budget_differences(runs: dict[str, RunRecord]) -> list[str]:
    """The budget's parts in which the runs differ, each as 'field (name value, ...)'."""
    differences = []
    # A log written before a field existed ran with its default.
    trains = {name: train_config_with_defaults(r.train) for name, r in runs.items()}
    values = {"samples": {name: r.samples for name, r in runs.items()}}
    for key in BUDGET_FIELDS:
        values[key] = {name: train[key] for name, train in trains.items()}
    for key, per_run in values.items():
        if len({json.dumps(v, sort_keys=True) for v in per_run.values()}) > 1:
            listed = ", ".join(f"{name} {json.dumps(v)}" for name, v in per_run.items())
            differences.append(f"{key} ({listed})")
    return differences


def budget_table(out: Path, runs: dict[str, RunRecord], reference: str) -> str:
    """The markdown table of `runs` (method name -> its run's record), scored in `out`."""
    results = out / "results.json"
    if not results.is_file():
        raise FileNotFoundError(f"{results} not found: is {out} the --out of `python -m eval`?")
    rows = {r["method"]: r for r in json.loads(results.read_text())}
    missing = [name for name in runs if name not in rows]
    if missing:
        raise ValueError(f"{results} has no method {', '.join(missing)}")
    if reference not in runs:
        raise ValueError(f"the reference {reference!r} is not one of the runs given")
    sources = list(rows[reference]["sources"])
    head = ["run", "variant", "samples", "wall time", "hardware", "IoU", "mean IoU", "mBA"]
    head += [f"{s} IoU / mBA" for s in sources]
    head += [f"mean IoU - {reference}", f"mBA - {reference}"]
    align = ["---", "---", "--:", "---", "---"] + ["--:"] * (len(head) - 5)  # numbers right
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    if "coarse" in rows:
        cells = ["coarse input", "", "", "", "", *_scores(rows["coarse"], sources), "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    for name, run in runs.items():
        hardware = "; ".join(dict.fromkeys(run.devices)) or "not logged"
        cells = [name, run.variant, f"{run.samples:,}", wall_time(run.seconds), hardware]
        cells += _scores(rows[name], sources)
        if name == reference:
            cells += ["", ""]
        else:
            d = compare(out, name, reference)
            cells += [str(d["iou"]), str(d["mba"])]
        lines.append("| " + " | ".join(cells) + " |")
    differences = budget_differences(runs)
    if differences:
        lines.append("\nNot an equal budget: the runs differ in " + "; ".join(differences) + ".")
    else:
        lines.append("\nAn equal budget: the same samples, seed, data and making of the items.")
    return "\n".join(lines)


def _scores(row: dict, sources: list[str]) -> list[str]:
    """A results.json row's cells: pooled IoU, mean IoU, mBA, then IoU / mBA per source."""
    cells = [f"{row['iou']:.2f}", f"{row['mean_iou']:.2f}", f"{row['mba']:.2f}"]
    for source in sources:
        s = row["sources"].get(source)
        cells.append(f"{s['iou']:.2f} / {s['mba']:.2f}" if s else "")
    return cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.budget",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", help="the --out folder of a `python -m eval` run that scored the runs")
    p.add_argument("runs", nargs="+", metavar="NAME=RUN", help="method name = training folder")
    p.add_argument("--reference", required=True, help="the run the others are compared to")
    args = p.parse_args(argv)
    runs = {}
    try:
        for spec in args.runs:
            name, sep, folder = spec.partition("=")
            if not sep or not name or not folder:
                raise ValueError(f"expected NAME=RUN, got {spec!r}")
            log = Path(folder) / "log.jsonl"
            if not log.is_file():
                raise FileNotFoundError(f"{log} not found: is {folder} a training run's folder?")
            runs[name] = run_record(log)
        print(budget_table(Path(args.out), runs, args.reference))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
