"""Speed and memory of refinement (SPEC section 5): `python -m eval.benchmark --help`.

On each device (--devices; the CPU, and the GPU when there is one), one scene (the example
image and its coarse mask) is resized to each size and refined by `airm.refine` in a fresh
process, which reports the median seconds of --repeats refinements (after a warm-up at 720 x
480, so start-up and model loading are excluded) and the process's peak memory (max RSS,
start-up included; on a GPU also the peak GPU allocation). With --compare, each size is also
refined without the shortcuts (every pixel queried, every scale encoded whole) and the
agreement is printed; with --every-pixel, airm queries every pixel throughout (tiles kept:
`InferenceOptions.every_pixel()`), and the JSON records each measurement's options. Then one
process refines the sizes in turn, --rounds times over, for the ratios of time between sizes:
taken round by round, they do not drift with the machine's speed the way the fresh processes'
times can (this shared machine varies by 20% from minute to minute). `airm refine` then refines
a folder of --folder pairs at --folder-size (images per second, files read and written
included). CascadePSP's pip package (`segmentation-refinement`, full mode, L=900) refines the
same scene at --cascadepsp-size on the same device in the same run, with its own weights when
they are on disk and random weights otherwise (its package downloads them at run time; random
weights time the same network, and the output says which were used). A measurement whose
process fails (out of memory at the largest size, say) is reported with its error, in the JSON
too, the others still run, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airm.cli.refine import add_precision_argument  # noqa: E402
from eval.child import ChildError, run_in_process  # noqa: E402
from eval.methods import AIRM_OPTIONS, CASCADEPSP_FOLDER  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples"


def parse_size(value: str) -> tuple[int, int]:
    """ "HxW" -> (H, W)."""
    height, width = value.lower().split("x")
    return int(height), int(width)


def load_scene(image_path: str, coarse_path: str, size: tuple[int, int]):
    """The image (HxWx3 uint8 RGB) and its coarse mask (HxW bool) resized to size (H, W)."""
    import cv2

    from airm.io import read_image, read_mask

    image = read_image(image_path, max_pixels=None)
    coarse = read_mask(coarse_path, max_pixels=None)
    h, w = size
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC)
    coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    return image, coarse


def _peaks(device_type: str) -> dict:
    import torch

    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device_type == "cuda" else None,
    }


def timed_refine(refine, image, coarse, device_type: str):
    """(mask, seconds) of refine(image, coarse), the GPU synchronised on both sides."""
    import torch

    if device_type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    mask = refine(image, coarse)
    if device_type == "cuda":
        torch.cuda.synchronize()
    return mask, time.perf_counter() - tic


def _airm_refiner(args: dict, mode: str):
    """The Refiner of args["checkpoint"] on args["device"] with the options of `mode` (a key
    of `AIRM_OPTIONS`) at args["precision"], with no pixel limit."""
    from airm.api import get_refiner

    options = AIRM_OPTIONS[mode](precision=args["precision"])
    return get_refiner(args["checkpoint"], args["device"]).with_options(options, max_pixels=None)


def measure_airm(args: dict) -> dict:
    """Refine the scene at args["size"] with airm (runs in its own process)."""
    import numpy as np

    refiner = _airm_refiner(args, args["mode"])
    refiner.refine(*load_scene(args["image"], args["coarse"], (480, 720)))  # warm-up
    image, coarse = load_scene(args["image"], args["coarse"], tuple(args["size"]))
    runs = [
        timed_refine(refiner.refine, image, coarse, refiner.device.type)
        for _ in range(args["repeats"])
    ]
    np.save(args["save"], runs[0][0] > 127)
    seconds = float(np.median([s for _, s in runs]))
    return {"seconds": seconds, "options": _options(refiner), **_peaks(refiner.device.type)}


def measure_rounds(args: dict) -> dict:
    """Refine the scene at each of args["sizes"] in turn, args["rounds"] times over, in one
    process, after a round that is not timed: the seconds of each refinement, [round][size].
    Every other round runs the sizes in reverse order, so that no size keeps its neighbours."""
    refiner = _airm_refiner(args, args["mode"])
    scenes = [load_scene(args["image"], args["coarse"], tuple(size)) for size in args["sizes"]]
    for image, coarse in scenes:
        refiner.refine(image, coarse)
    rounds = []
    for r in range(args["rounds"]):
        order = range(len(scenes)) if r % 2 == 0 else reversed(range(len(scenes)))
        seconds = [0.0] * len(scenes)
        for i in order:
            seconds[i] = timed_refine(refiner.refine, *scenes[i], refiner.device.type)[1]
        rounds.append(seconds)
    return {"sizes": args["sizes"], "seconds": rounds, "options": _options(refiner)}


def measure_folder(args: dict) -> dict:
    """`airm refine` over a folder of args["pairs"] copies of the scene at args["size"], files
    read and written by its threads beside the refinement (in its own process). The model is
    loaded and warmed up first, as for one refinement."""
    import cv2

    from airm.api import get_refiner
    from airm.cli.refine import parse_args, run

    image, coarse = load_scene(args["image"], args["coarse"], tuple(args["size"]))
    refiner = get_refiner(args["checkpoint"], args["device"])  # the cached one `run` uses
    refiner.refine(image, coarse)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "masks").mkdir()
        for i in range(args["pairs"]):
            cv2.imwrite(str(root / "images" / f"{i:03d}.jpg"), image[..., ::-1])
            cv2.imwrite(str(root / "masks" / f"{i:03d}.png"), coarse.astype("uint8") * 255)
        flags = ["--image", str(root / "images"), "--coarse", str(root / "masks")]
        flags += ["--out", str(root / "out"), "--quiet"]
        flags += ["--checkpoint", args["checkpoint"]] if args["checkpoint"] else []
        flags += ["--precision", args["precision"]]
        flags += ["--every-pixel"] if args["mode"] == "airm_every_pixel" else []
        flags += ["--device", args["device"]] if args["device"] else []
        tic = time.perf_counter()
        status = run(parse_args(flags))
        seconds = time.perf_counter() - tic
    if status != 0:
        raise RuntimeError(f"airm refine exited with {status} on the benchmark folder")
    return {"seconds": seconds / args["pairs"], **_peaks(refiner.device.type)}


def _options(refiner) -> dict:
    """The InferenceOptions a measurement ran with, for the JSON record."""
    return dataclasses.asdict(refiner.options)


def measure_cascadepsp(args: dict) -> dict:
    """Refine the scene at args["size"] with CascadePSP's package (in its own process)."""
    import torch

    from eval.methods import MethodUnavailable, build_method

    folder = Path(args["cascadepsp_folder"]).expanduser()
    weights = "its published weights"
    with tempfile.TemporaryDirectory() as tmp:
        if not (folder / "model").is_file():
            weights = "random weights (its own are downloaded at run time; timing only)"
            folder = Path(tmp)
            _write_random_cascadepsp_weights(folder / "model")
        try:
            refine = build_method("cascadepsp", device=args["device"], cascadepsp_folder=folder)
        except MethodUnavailable as e:
            return {"skipped": str(e)}
    device = torch.device(args["device"] or "cpu")
    image, coarse = load_scene(args["image"], args["coarse"], tuple(args["size"]))
    _, seconds = timed_refine(refine, image, coarse, device.type)
    return {"seconds": seconds, "weights": weights, **_peaks(device.type)}


def _write_random_cascadepsp_weights(path: Path) -> None:
    """A randomly initialised CascadePSP network, saved as its package expects its weights."""
    try:
        import torch
        from segmentation_refinement.models.psp.pspnet import RefinementModule
    except ImportError:
        return  # build_method then says the package is missing
    torch.manual_seed(0)
    torch.save({f"module.{k}": v for k, v in RefinementModule().state_dict().items()}, path)


def _row(device: str, label: str, size: tuple[int, int], r: dict) -> str:
    gpu = f"{r['gpu_peak_mb']:9.0f}" if r.get("gpu_peak_mb") is not None else f"{'-':>9}"
    mp = size[0] * size[1] / 1e6
    return (
        f"{device:<7}{size[0]:>5}x{size[1]:<6}{mp:6.1f}  {label:<12}{r['seconds']:9.3f}"
        f"{r['peak_rss_mb']:13.0f}{gpu}"
    )


def _devices(value: str | None) -> list[str]:
    if value:
        return value.split(",")
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: shipped model)")
    p.add_argument(
        "--devices",
        default=None,
        help="comma-separated torch devices, each measured in turn (default: cpu, and cuda when "
        "there is a GPU)",
    )
    p.add_argument("--image", default=str(EXAMPLE / "composite_im.jpg"), help="image to resize")
    p.add_argument("--coarse", default=str(EXAMPLE / "composite_seg.png"), help="its coarse mask")
    p.add_argument(
        "--sizes",
        default="864x1296,1164x1746,2328x3492,4000x6000",
        help="comma-separated HxW sizes (default: 1, 2, 8 and 24 megapixels)",
    )
    p.add_argument(
        "--cascadepsp-size",
        default="2328x3492",
        help="HxW at which CascadePSP is timed too ('none' to skip)",
    )
    p.add_argument(
        "--cascadepsp-folder",
        default=str(CASCADEPSP_FOLDER),
        help=f"folder holding CascadePSP's `model` weights, if you have them ({CASCADEPSP_FOLDER})",
    )
    p.add_argument(
        "--compare", action="store_true", help="also refine without shortcuts; print agreement"
    )
    p.add_argument(
        "--every-pixel",
        action="store_true",
        help="time airm querying every pixel (`InferenceOptions.every_pixel()`, `airm refine "
        "--every-pixel`) instead of the boundary bands",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="refinements per size; the median is reported"
    )
    p.add_argument(
        "--folder",
        type=int,
        default=16,
        help="pairs in a folder refined by `airm refine` at --folder-size (0 to skip)",
    )
    p.add_argument("--folder-size", default="1164x1746", help="HxW of the folder's pairs")
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of the sizes refined in turn in one process, for the ratios of time "
        "between sizes (0 to skip)",
    )
    add_precision_argument(p)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    results: list[dict] = []
    failures: list[dict] = []  # measurements whose process failed: reported, the rest still run

    def measure(fn, job: dict, **where) -> dict | None:
        try:
            return run_in_process(fn, job)
        except ChildError as e:
            print(f"error: {fn.__name__} failed: {e}", file=sys.stderr)
            failures.append({**where, "failed": e.summary})
            return None

    if args.every_pixel:
        print("airm queries every pixel (--every-pixel), not the boundary bands")
    print(
        f"{'device':<7}{'size':>12}{'MP':>6}  {'method':<12}{'seconds':>9}{'peak RSS MB':>13}"
        f"{'GPU MB':>9}"
    )
    for device in _devices(args.devices):
        common = {
            "checkpoint": args.checkpoint,
            "device": device,
            "image": args.image,
            "coarse": args.coarse,
            "precision": args.precision,
            "mode": "airm_every_pixel" if args.every_pixel else "airm",
        }
        with tempfile.TemporaryDirectory() as tmp:
            for size in sizes:
                modes = ["airm", "exhaustive"] if args.compare else ["airm"]
                for mode in modes:
                    save = str(Path(tmp) / f"{mode}_{size[0]}x{size[1]}.npy")
                    job = {"size": list(size), "save": save}
                    job["repeats"] = args.repeats if mode == "airm" else 1
                    if mode == "exhaustive":
                        job["mode"] = "airm_exhaustive"
                    where = {"device": device, "size": list(size), "method": mode}
                    r = measure(measure_airm, {**common, **job}, **where)
                    if r is None:
                        continue
                    results.append({**where, **r})
                    print(_row(device, mode, size, r), flush=True)
                if args.compare and all(
                    Path(tmp, f"{m}_{size[0]}x{size[1]}.npy").exists() for m in modes
                ):
                    results.append({"device": device, **_agreement(tmp, size)})
        if args.rounds and len(sizes) > 1:
            job = {"sizes": [list(size) for size in sizes], "rounds": args.rounds}
            r = measure(measure_rounds, {**job, **common}, device=device, method="rounds")
            if r is not None:
                results.append({"device": device, "method": "rounds", **r})
        if args.folder:
            size = parse_size(args.folder_size)
            where = {"device": device, "size": list(size), "method": "folder"}
            r = measure(
                measure_folder, {"size": list(size), "pairs": args.folder, **common}, **where
            )
            if r is not None:
                results.append({**where, **r})
                print(_row(device, "folder", size, r) + f"   ({1 / r['seconds']:.1f} images/s)")
        if args.cascadepsp_size != "none":
            size = parse_size(args.cascadepsp_size)
            where = {"device": device, "size": list(size), "method": "cascadepsp"}
            job = {"size": list(size), "cascadepsp_folder": args.cascadepsp_folder, **common}
            r = measure(measure_cascadepsp, job, **where)
            if r is None:
                pass
            elif "skipped" in r:
                print(f"cascadepsp skipped: {r['skipped']}")
            else:
                results.append({**where, **r})
                print(_row(device, "cascadepsp", size, r) + f"   ({r['weights']})", flush=True)
    _print_ratios(results)
    for failure in failures:
        print(f"failed: {failure}")
    if args.json:
        Path(args.json).write_text(json.dumps(results + failures, indent=2))
    return 1 if failures else 0


def _agreement(folder: str, size: tuple[int, int]) -> dict:
    import numpy as np

    a = np.load(Path(folder) / f"airm_{size[0]}x{size[1]}.npy")
    b = np.load(Path(folder) / f"exhaustive_{size[0]}x{size[1]}.npy")
    iou = float((a & b).sum() / max(1, (a | b).sum()))
    differing = float((a != b).mean())
    print(f"{'':>20}agreement: IoU {100 * iou:.3f}, pixels differing {100 * differing:.4f}%")
    return {"size": list(size), "method": "agreement", "iou": iou, "differing": differing}


def _print_ratios(results: list[dict]) -> None:
    """The ratios the targets are stated in, per device: vs CascadePSP at its size, the time
    of each size against the next smaller one, and the exhaustive path against the default."""
    for device in dict.fromkeys(r["device"] for r in results):
        mine = [r for r in results if r["device"] == device]
        airm = {tuple(r["size"]): r for r in mine if r["method"] == "airm"}
        for r in mine:
            if r["method"] == "cascadepsp" and tuple(r["size"]) in airm:
                ours = airm[tuple(r["size"])]
                print(
                    f"{device}, {r['size'][0]}x{r['size'][1]}: airm is "
                    f"{r['seconds'] / ours['seconds']:.1f}x faster than CascadePSP and uses "
                    f"{r['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x less peak memory"
                )
            if r["method"] == "exhaustive" and tuple(r["size"]) in airm:
                ours = airm[tuple(r["size"])]
                print(
                    f"{device}, {r['size'][0]}x{r['size'][1]}: every pixel queried takes "
                    f"{r['seconds'] / ours['seconds']:.1f}x the time of the default path"
                )
        by_mp = sorted(airm.items(), key=lambda kv: kv[0][0] * kv[0][1])
        for (small, rs), (big, rb) in zip(by_mp, by_mp[1:], strict=False):
            pixels = (big[0] * big[1]) / (small[0] * small[1])
            print(
                f"{device}, {big[0]}x{big[1]} vs {small[0]}x{small[1]}: {pixels:.1f}x the "
                f"pixels, {rb['seconds'] / rs['seconds']:.2f}x the time"
            )
        for r in (r for r in mine if r["method"] == "rounds"):
            sizes = [tuple(size) for size in r["sizes"]]
            order = sorted(range(len(sizes)), key=lambda i: sizes[i][0] * sizes[i][1])
            for i, j in zip(order, order[1:], strict=False):
                ratios = sorted(seconds[j] / seconds[i] for seconds in r["seconds"])
                print(
                    f"{device}, {sizes[j][0]}x{sizes[j][1]} vs {sizes[i][0]}x{sizes[i][1]}, "
                    f"{len(ratios)} rounds in one process: {statistics.median(ratios):.2f}x the "
                    f"time (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"
                )


if __name__ == "__main__":
    sys.exit(main())
