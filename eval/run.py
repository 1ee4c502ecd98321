"""Score refiners side by side on a BIG-layout folder (SPEC section 4).

    python -m eval --data ../shared/data/val --method airm=path/to/model.safetensors \\
        --method sirmf=path/to/sirmf.safetensors

Each method runs in its own process, so that its peak memory (max RSS) is its own. The coarse
input is always scored. Prints a table of pooled IoU, mean IoU, mBA, seconds per image and
peak memory, overall and per source (the name prefix before the first '-').
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python eval/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airm.data import Pair, find_pairs  # noqa: E402
from airm.evaluation import score_pairs  # noqa: E402
from eval.child import run_in_process  # noqa: E402

# Published numbers (BIG test set, PSPNet coarse masks), IoU / mBA.
PUBLISHED = {
    "coarse (PSPNet)": (90.49, 59.63),
    "CascadePSP": (93.93, 75.32),
    "CRM": (94.18, 76.09),
    "SegRefiner": (95.30, 77.46),
    "AIRM (paper)": (95.95, 76.88),
}


def score_method(name: str, checkpoint: str | None, pairs: list[Pair], device: str | None) -> dict:
    """Refine every pair with one method (in its own process) and return its summary."""
    refine = None
    if checkpoint is not None:
        from airm.refiner import Refiner

        refiner = Refiner.from_checkpoint(checkpoint, device=device, max_pixels=None)

        def refine(image, coarse):
            return refiner.refine(image, coarse) > 127

    scores = score_pairs(pairs, refine)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": name, **scores, "peak_mb": peak_mb}


def format_table(results: list[dict]) -> str:
    lines = [f"{'method':<24}{'IoU':>8}{'mIoU':>8}{'mBA':>8}{'s/img':>8}{'peak MB':>9}"]
    for r in results:
        lines.append(
            f"{r['method']:<24}{r['iou']:8.2f}{r['mean_iou']:8.2f}{r['mba']:8.2f}"
            f"{r['seconds']:8.2f}{r['peak_mb']:9.0f}"
        )
    sources = sorted({s for r in results for s in r["sources"]})
    for source in sources:
        lines.append(f"\n{source}")
        for r in results:
            s = r["sources"].get(source)
            if s:
                lines.append(
                    f"  {r['method']:<22}{s['iou']:8.2f}{s['mean_iou']:8.2f}{s['mba']:8.2f}"
                    f"   (n={s['n']})"
                )
    lines.append(
        "\npublished, BIG test (IoU / mBA): "
        + ", ".join(f"{k} {v[0]:.2f}/{v[1]:.2f}" for k, v in PUBLISHED.items())
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="BIG-layout folder with _im, _gt and _seg files")
    p.add_argument(
        "--method",
        action="append",
        default=[],
        help="NAME=CHECKPOINT of an airm model to score (repeatable)",
    )
    p.add_argument("--device", default=None, help="torch device for the models")
    p.add_argument("--limit", type=int, default=None, help="score only the first N pairs")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    methods: list[tuple[str, str | None]] = [("coarse", None)]
    for spec in args.method:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            print(
                f"error: --method wants NAME=CHECKPOINT with an existing file, got {spec!r}",
                file=sys.stderr,
            )
            return 2
        methods.append((name, path))
    try:
        pairs = [pair for pair in find_pairs(args.data) if pair.coarse is not None][: args.limit]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not pairs:
        print(f"error: no pairs with a _seg.png coarse mask in {args.data}", file=sys.stderr)
        return 2
    results = [
        run_in_process(score_method, name, ckpt, pairs, args.device) for name, ckpt in methods
    ]
    print(f"{len(pairs)} images from {args.data}\n")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
