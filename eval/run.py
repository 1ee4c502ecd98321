"""Score refiners side by side on a BIG-layout folder, by CascadePSP's protocol (SPEC section 4).

    python -m eval --data ../shared/data/val --out runs/eval \\
        --methods coarse,airm,sirmf,crm,cascadepsp,guided_filter,dense_crf

Each method runs in its own process (so that its peak memory, max RSS with start-up included,
is its own), writes `OUT/<method>/<name>_mask.png`, and is then scored from those files, so the
table is exactly what the written masks score. Writes `OUT/results.json`, `OUT/results.csv`
and `OUT/<method>/scores.json` (per image), and prints a markdown table: per method, per source
(from the folder's manifest.json, else the name's prefix), and the published BIG numbers.
A method that cannot run here (a package or weights missing) is skipped with its reason; one
that fails while it runs is reported with its error, the others still run, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # `python eval/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airm.cli.refine import add_precision_argument  # noqa: E402
from airm.config import field_overrides  # noqa: E402
from airm.data import Pair, check_pairs, find_pairs  # noqa: E402
from airm.inference import InferenceOptions  # noqa: E402
from airm.scoring import read_coarse, score_pairs  # noqa: E402
from eval.child import ChildError, run_in_process  # noqa: E402
from eval.methods import (  # noqa: E402
    AIRM_OPTIONS,
    CASCADEPSP_FOLDER,
    CLASSICAL,
    MethodUnavailable,
    build_method,
    known_methods,
)

# Published numbers (BIG test set, PSPNet coarse masks), IoU / mBA.
PUBLISHED = {
    "coarse (PSPNet)": (90.49, 59.63),
    "CascadePSP": (93.93, 75.32),
    "CRM": (94.18, 76.09),
    "SegRefiner": (95.30, 77.46),
    "AIRM (paper)": (95.95, 76.88),
}
# Average gains over four coarse sources, IoU / mBA.
PUBLISHED_GAINS = {"CascadePSP": (3.58, 14.05), "CRM": (4.01, 15.12), "SegRefiner": (7.43, 17.33)}

CSV_FIELDS = ("method", "source", "n", "iou", "mean_iou", "mba", "sec_per_image", "peak_mb")


def mask_path(out: Path, method: str, pair: Pair) -> Path:
    return out / method / f"{pair.name}_mask.png"


def read_written(path: Path) -> np.ndarray:
    """A written mask as HxW uint8."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def run_method(name: str, pairs: list[Pair], out: Path, settings: dict) -> dict:
    """Refine every pair with one method and write its masks (runs in its own process).

    Returns {"seconds": mean seconds inside the method per image, "peak_mb": max RSS}, or
    {"skipped": reason}.
    """
    from tqdm import tqdm

    from airm.io import read_image, write_mask

    try:
        refine = build_method(name, **settings)
    except MethodUnavailable as e:
        return {"skipped": str(e)}
    seconds = 0.0
    for pair in tqdm(pairs, desc=name, unit="image", file=sys.stderr):
        image = read_image(pair.image, max_pixels=None)
        coarse = read_coarse(pair)
        tic = time.perf_counter()
        mask = refine(image, coarse)
        seconds += time.perf_counter() - tic
        write_mask(mask_path(out, name, pair), mask)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds / len(pairs), "peak_mb": peak_mb}


def clear_method(out: Path, name: str) -> None:
    """Remove the masks and scores an earlier run of method `name` wrote into `OUT/<name>/`, so
    that if it fails now nothing stale is left to read; nothing else there is touched."""
    folder = out / name
    if folder.is_dir():
        for path in [*folder.glob("*_mask.png"), folder / "scores.json"]:
            path.unlink(missing_ok=True)


def score_method(name: str, pairs: list[Pair], out: Path, timing: dict) -> dict:
    """The result row of a method, scored from the masks it wrote."""
    scores = score_pairs(pairs, lambda pair: read_written(mask_path(out, name, pair)))
    (out / name / "scores.json").write_text(json.dumps(without_nan(scores["images"]), indent=1))
    row = {k: v for k, v in scores.items() if k != "images"}
    return {
        "method": name,
        **row,
        "sec_per_image": timing["seconds"],
        "peak_mb": timing["peak_mb"],
    }


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            common = {"method": row["method"], "sec_per_image": row["sec_per_image"]}
            writer.writerow({**common, "source": "all", "peak_mb": row["peak_mb"], **_nums(row)})
            for source, s in row["sources"].items():
                writer.writerow({**common, "source": source, "peak_mb": "", **_nums(s)})


def _nums(s: dict) -> dict:
    return {"n": s["n"], "iou": s["iou"], "mean_iou": s["mean_iou"], "mba": s["mba"]}


def points(value: float, sign: str = "") -> str:
    """A score in points for the tables; "n/a" for NaN (no image had a boundary to score)."""
    return "n/a" if np.isnan(value) else f"{value:{sign}.2f}"


def without_nan(value):
    """`value` with every float NaN in it made None (JSON's null; json.dumps writes NaN)."""
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def markdown_table(rows: list[dict], coarse: dict) -> str:
    """Per method, per source, per source and kind of coarse mask (when the data's manifest
    says how each was made), and the published numbers, as markdown."""
    lines = [
        "| method | n | IoU | mean IoU | mBA | IoU gain | mBA gain | s / image | peak MB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['n']} | {points(r['iou'])} | {points(r['mean_iou'])} "
            f"| {points(r['mba'])} | {points(r['iou'] - coarse['iou'], '+')} "
            f"| {points(r['mba'] - coarse['mba'], '+')} "
            f"| {r['sec_per_image']:.3f} | {r['peak_mb']:.0f} |"
        )
    for key, title in (("sources", "source"), ("coarse_kinds", "source / coarse mask")):
        groups = sorted({g for r in rows for g in r.get(key, {})})
        if len(groups) < 2:
            continue
        lines += [
            "",
            f"| {title} | method | n | IoU | mean IoU | mBA |",
            "|---|---|--:|--:|--:|--:|",
        ]
        for group in groups:
            for r in rows:
                s = r.get(key, {}).get(group)
                if s:
                    lines.append(
                        f"| {group} | {r['method']} | {s['n']} | {points(s['iou'])} "
                        f"| {points(s['mean_iou'])} | {points(s['mba'])} |"
                    )
    lines += ["", "| published, BIG test (PSPNet coarse) | IoU | mBA |", "|---|--:|--:|"]
    lines += [f"| {k} | {iou:.2f} | {mba:.2f} |" for k, (iou, mba) in PUBLISHED.items()]
    lines.append(
        "\npublished average gains over four coarse sources (IoU / mBA): "
        + ", ".join(f"{k} {g[0]:+.2f} / {g[1]:+.2f}" for k, g in PUBLISHED_GAINS.items())
    )
    return "\n".join(lines)


def write_overlays(out: Path, pairs: list[Pair], rows: list[dict], coarse: dict, k: int) -> None:
    """`OUT/overlays/<method>_{gain,loss}<rank>_<name>.jpg`: image | coarse | method | truth for
    the k images where each method gains and loses the most IoU over the coarse mask."""
    from airm.io import atomic_write, read_image, read_mask

    by_name = {p.name: p for p in pairs}
    coarse_iou = {s["name"]: s["iou"] for s in coarse["images"]}
    for row in rows:
        if row["method"] == "coarse":
            continue
        images = json.loads((out / row["method"] / "scores.json").read_text())
        ranked = sorted(images, key=lambda s: s["iou"] - coarse_iou[s["name"]])
        # Ranks count from 0 at the largest gain and at the largest loss.
        picks = [("gain", rank, s) for rank, s in enumerate(ranked[::-1][:k])]
        picks += [("loss", rank, s) for rank, s in enumerate(ranked[:k])]
        for kind, rank, s in picks:
            pair = by_name[s["name"]]
            panels = [
                read_image(pair.image, max_pixels=None),
                read_coarse(pair),
                read_written(mask_path(out, row["method"], pair)) > 127,
                read_mask(pair.mask, max_pixels=None) > 0.5,
            ]
            picture = _side_by_side(panels)
            dst = out / "overlays" / f"{row['method']}_{kind}{rank}_{pair.name}.jpg"
            atomic_write(dst, lambda tmp, p=picture: Image.fromarray(p).save(tmp, format="JPEG"))


def _side_by_side(panels: list[np.ndarray], height: int = 320) -> np.ndarray:
    """The image, then each mask tinted over it, resized to one height and joined."""
    import cv2

    image = panels[0]
    scale = height / image.shape[0]
    size = (max(1, round(image.shape[1] * scale)), height)
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    tiles = [small]
    for mask in panels[1:]:
        m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        tinted = small.copy()
        tinted[m] = (0.45 * small[m] + 0.55 * np.array([0, 200, 255])).astype(np.uint8)
        tiles.append(tinted)
    return np.concatenate(tiles, axis=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="BIG-layout folder with _im, _gt and _seg files")
    p.add_argument("--out", required=True, help="folder for the masks, results.json and .csv")
    p.add_argument(
        "--methods",
        default="coarse,airm",
        help=f"comma-separated: {', '.join(known_methods({}))}, or a NAME given with "
        "--checkpoint (default: coarse,airm)",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an airm checkpoint to score as method NAME (repeatable; airm=PATH replaces the "
        "shipped model); named methods are added to --methods",
    )
    p.add_argument(
        "--cascadepsp-folder",
        type=Path,
        default=CASCADEPSP_FOLDER,
        help=f"folder holding CascadePSP's `model` file (default {CASCADEPSP_FOLDER})",
    )
    p.add_argument("--device", default=None, help="torch device for the models")
    add_precision_argument(p)
    p.add_argument(
        "--inference",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an InferenceOptions field for every airm method (repeatable; VALUE is JSON), "
        "e.g. min_step=1.0 for the scales of the earlier default",
    )
    p.add_argument("--limit", type=int, default=None, help="score only the first N pairs")
    p.add_argument(
        "--overlays",
        type=int,
        default=0,
        metavar="K",
        help="pictures of each method's K best and K worst images (IoU gain over the coarse mask)",
    )
    return p.parse_args(argv)


def named_checkpoint(spec: str) -> tuple[str, Path]:
    """A --checkpoint NAME=PATH flag -> (NAME, PATH); ValueError unless PATH is a file that
    loads as an airm checkpoint (checked here, before any method runs)."""
    from airm.checkpoint import CheckpointError, load_model

    name, sep, path = spec.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise ValueError(f"--checkpoint wants NAME=PATH of an existing file, got {spec!r}")
    if name in ("coarse", *CLASSICAL) or (name in AIRM_OPTIONS and name != "airm"):
        # (airm, sirmf and crm take the checkpoint in place of their shipped weights)
        raise ValueError(f"--checkpoint {name}: a built-in method's name; give it another NAME")
    if name in (".", "..", "overlays") or "/" in name or "\\" in name:
        raise ValueError(f"--checkpoint {name}: NAME must be a plain folder name, not 'overlays'")
    try:
        load_model(path)
    except CheckpointError as e:
        raise ValueError(f"--checkpoint {name}: {e}") from None
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    try:
        checkpoints = dict(named_checkpoint(spec) for spec in args.checkpoint)
        inference = dict(field_overrides(args.inference, InferenceOptions, "--inference"))
        InferenceOptions(**inference)
    except (TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    methods = [m for m in args.methods.split(",") if m]
    methods += [n for n in checkpoints if n not in methods]
    try:
        pairs = [pair for pair in find_pairs(args.data) if pair.coarse is not None][: args.limit]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not pairs:
        print(f"error: no pairs with a _seg.png coarse mask in {args.data}", file=sys.stderr)
        return 2
    try:
        check_pairs(pairs, "evaluation")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    unknown = [m for m in methods if m not in known_methods(checkpoints)]
    if unknown:
        print(
            f"error: unknown methods {unknown}; choose from {known_methods(checkpoints)}",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    settings = {
        "checkpoints": checkpoints,
        "device": args.device,
        "cascadepsp_folder": args.cascadepsp_folder,
        "precision": args.precision,
        "inference": inference,
    }
    rows, skipped, failed = [], {}, {}
    for name in methods:
        clear_method(out, name)
        try:
            timing = run_in_process(run_method, name, pairs, out, settings)
        except ChildError as e:  # the other methods still run and are scored
            failed[name] = e.summary
            print(f"error: {name} failed: {e}", file=sys.stderr)
            continue
        if "skipped" in timing:
            skipped[name] = timing["skipped"]
            print(f"skipped {name}: {timing['skipped']}", file=sys.stderr)
            continue
        rows.append(score_method(name, pairs, out, timing))
    coarse = score_pairs(pairs, read_coarse)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(without_nan(rows), indent=2))
    write_csv(out / "results.csv", rows)
    if args.overlays > 0:
        write_overlays(out, pairs, rows, coarse, args.overlays)
    print(f"\n{len(pairs)} images from {args.data}\n")
    print(markdown_table(rows, coarse))
    for name, reason in skipped.items():
        print(f"\nskipped {name}: {reason}")
    for name, reason in failed.items():
        print(f"\nfailed {name}: {reason}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
