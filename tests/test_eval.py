import csv
import json

import numpy as np
import pytest
from PIL import Image

from airm.inference import InferenceOptions
from airm.metrics import boundary_accuracy, iou_counts
from eval.child import ChildError
from eval.run import main

from conftest import disc_pair


def big_folder(root, n=3):
    """A BIG-layout folder of generated pairs, with a manifest naming two sources and, for all
    but the last pair, how its coarse mask was made."""
    root.mkdir()
    manifest = []
    for i in range(n):
        image, coarse = disc_pair(60, 80, seed=i)
        truth = image[..., 0] > 120
        Image.fromarray(image).save(root / f"d-{i}_im.jpg")
        Image.fromarray(truth.astype(np.uint8) * 255).save(root / f"d-{i}_gt.png")
        Image.fromarray(coarse).save(root / f"d-{i}_seg.png")
        entry = {"name": f"d-{i}", "source": "even" if i % 2 == 0 else "odd"}
        if i < n - 1:
            entry["coarse"] = "lowres" if i < 2 else "perturb"
        manifest.append(entry)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def rescore(data, out, method, names):
    """Pooled IoU and mBA of the masks a method wrote, computed here from the files."""
    inter = union = 0
    bas = []
    for name in names:
        gt = np.asarray(Image.open(data / f"{name}_gt.png")) > 127
        pred = np.asarray(Image.open(out / method / f"{name}_mask.png")) > 127
        i, u = iou_counts(pred, gt)
        inter, union = inter + i, union + u
        bas.append(boundary_accuracy(pred, gt))
    return 100 * inter / union, 100 * float(np.mean(bas))


def test_results_are_what_the_written_masks_score(tmp_path, tiny_checkpoint, capsys):
    data, out = big_folder(tmp_path / "val"), tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--overlays", "1"]
    argv += [
        "--methods",
        "coarse,guided_filter,dense_crf",
        "--checkpoint",
        f"tiny={tiny_checkpoint}",
    ]
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["coarse", "guided_filter", "dense_crf", "tiny"]
    names = [f"d-{i}" for i in range(3)]
    for row in rows:
        iou, mba = rescore(data, out, row["method"], names)
        assert row["iou"] == pytest.approx(iou, abs=1e-9)
        assert row["mba"] == pytest.approx(mba, abs=1e-9)
        assert row["n"] == 3 and row["sec_per_image"] >= 0 and row["peak_mb"] > 0
        assert set(row["sources"]) == {"even", "odd"}
        # d-0 and d-1 lowres, d-2 of unknown kind: grouped only where the manifest says
        assert set(row["coarse_kinds"]) == {"even / lowres", "odd / lowres"}
        for group, name in (("even / lowres", "d-0"), ("odd / lowres", "d-1")):
            iou, mba = rescore(data, out, row["method"], [name])
            assert row["coarse_kinds"][group]["iou"] == pytest.approx(iou, abs=1e-9)
            assert row["coarse_kinds"][group]["mba"] == pytest.approx(mba, abs=1e-9)
    with open(out / "results.csv") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 4 * 3  # each method: all + 2 sources
    table = capsys.readouterr().out
    assert "| tiny | 3 |" in table and "AIRM (paper)" in table and "| odd | coarse |" in table
    assert "| odd / lowres | tiny | 1 |" in table
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert len(overlays) == 3 * 2 and all(p.endswith(".jpg") for p in overlays)


def test_coarse_row_scores_the_seg_masks(tmp_path):
    data, out = big_folder(tmp_path / "val"), tmp_path / "out"
    assert main(["--data", str(data), "--out", str(out), "--methods", "coarse"]) == 0
    inter = union = 0
    for i in range(3):
        gt = np.asarray(Image.open(data / f"d-{i}_gt.png")) > 127
        seg = np.asarray(Image.open(data / f"d-{i}_seg.png")) > 127
        inter, union = inter + (gt & seg).sum(), union + (gt | seg).sum()
    row = json.loads((out / "results.json").read_text())[0]
    assert row["iou"] == pytest.approx(100 * inter / union, abs=1e-9)


def test_cascadepsp_without_weights_is_skipped_with_a_reason(tmp_path, capsys):
    data, out = big_folder(tmp_path / "val", n=1), tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--methods", "coarse,cascadepsp"]
    assert main([*argv, "--cascadepsp-folder", str(tmp_path / "none")]) == 0
    assert [r["method"] for r in json.loads((out / "results.json").read_text())] == ["coarse"]
    assert "skipped cascadepsp: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--methods", "coarse,nope"],
        ["--checkpoint", "x=missing.safetensors"],
        ["--checkpoint", "no-equals-sign"],
        ["--inference", "nope=1"],
        ["--inference", "min_step=0.5"],
        ["--inference", "band=wide"],
    ],
)
def test_bad_arguments_exit_2(tmp_path, argv):
    data = big_folder(tmp_path / "val", n=1)
    assert main(["--data", str(data), "--out", str(tmp_path / "out"), *argv]) == 2


def test_a_limit_below_one_exits_2(tmp_path, tiny_checkpoint, capsys):
    from eval.last_scale import main as last_scale

    data, out = big_folder(tmp_path / "val", n=2), tmp_path / "out"
    assert main(["--data", str(data), "--out", str(out), "--limit", "-1"]) == 2
    argv = ["--data", str(data), "--checkpoint", str(tiny_checkpoint), "--limit", "-1"]
    assert last_scale(argv) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --limit must be >= 1, got -1"] * 2
    assert not out.exists()


def test_a_checkpoint_that_does_not_load_exits_2_before_anything_runs(tmp_path, capsys):
    data, out = big_folder(tmp_path / "val", n=1), tmp_path / "out"
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    argv = ["--data", str(data), "--out", str(out), "--checkpoint", f"mine={broken}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --checkpoint mine: ") and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "name", ["dense_crf", "coarse", "airm_untiled", "../esc", "a/b", "..", "overlays"]
)
def test_a_checkpoint_named_as_a_built_in_method_or_not_as_a_folder_exits_2(
    tmp_path, tiny_checkpoint, capsys, name
):
    data, out = big_folder(tmp_path / "val", n=1), tmp_path / "run" / "out"
    argv = ["--data", str(data), "--out", str(out), "--checkpoint", f"{name}={tiny_checkpoint}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --checkpoint {name}: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_unusable_pairs_exit_2_before_any_method_runs(tmp_path, capsys):
    data, out = big_folder(tmp_path / "val", n=2), tmp_path / "out"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(data / "d-1_gt.png")  # a smaller truth
    assert main(["--data", str(data), "--out", str(out), "--methods", "coarse"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 of the 2 evaluation pairs are unusable: d-1_gt.png")
    assert len(err.splitlines()) == 1 and not out.exists()


def test_a_rerun_leaves_no_stale_masks_of_a_method_that_now_fails(tmp_path, monkeypatch, capsys):
    import eval.run
    from eval.compare import main as compare_main

    data, out = big_folder(tmp_path / "val", n=2), tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--methods", "coarse,guided_filter"]
    assert main(argv) == 0
    (out / "guided_filter" / "notes.txt").write_text("not the tool's")
    real = eval.run.run_in_process

    def failing_guided_filter(fn, name, *args):
        if name == "guided_filter":
            raise ChildError("run_method raised MemoryError: imitated")
        return real(fn, name, *args)

    monkeypatch.setattr(eval.run, "run_in_process", failing_guided_filter)
    assert main(argv) == 1
    assert sorted(p.name for p in (out / "guided_filter").iterdir()) == ["notes.txt"]
    # compare reads the methods results.json lists, not whatever folders hold scores
    (out / "old").mkdir()
    (out / "old" / "scores.json").write_text((out / "coarse" / "scores.json").read_text())
    capsys.readouterr()
    assert compare_main([str(out), "--reference", "coarse"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # the header alone


def test_overlays_count_from_the_largest_gain_and_loss_when_k_exceeds_the_images(tmp_path):
    data, out = big_folder(tmp_path / "val", n=2), tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--methods", "coarse,guided_filter"]
    assert main([*argv, "--overlays", "3"]) == 0
    coarse = {s["name"]: s["iou"] for s in json.loads((out / "coarse" / "scores.json").read_text())}
    scores = json.loads((out / "guided_filter" / "scores.json").read_text())
    worst = min(scores, key=lambda s: s["iou"] - coarse[s["name"]])["name"]
    best = ({"d-0", "d-1"} - {worst}).pop()
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(
        f"guided_filter_{kind}_{name}.jpg"
        for kind, name in (("gain0", best), ("gain1", worst), ("loss0", worst), ("loss1", best))
    )


def test_a_truth_without_boundary_is_n_a_in_the_tables_and_null_in_json(tmp_path, capsys):
    import warnings

    from eval.compare import main as compare_main

    data, out = big_folder(tmp_path / "val", n=1), tmp_path / "out"
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(data / "d-0_gt.png")
    argv = ["--data", str(data), "--out", str(out), "--methods", "coarse,guided_filter"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| coarse | 1 | 0.00 | 0.00 | n/a | +0.00 | n/a |" in table and "nan" not in table

    def no_constants(name):
        raise AssertionError(f"results.json holds {name}")

    rows = json.loads((out / "results.json").read_text(), parse_constant=no_constants)
    assert rows[0]["mba"] is None and rows[0]["sources"]["even"]["mba"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compare_main([str(out), "--reference", "coarse"]) == 0
    table = capsys.readouterr().out
    assert "| guided_filter | all | 1 |" in table and "| n/a | 0 |" in table and "nan" not in table


@pytest.mark.parametrize("problem", ["missing", "file", "empty", "reference", "resamples"])
def test_compare_exits_2_on_unusable_arguments(tmp_path, capsys, problem):
    from eval.compare import main as compare_main

    out = tmp_path / "out"
    argv = [str(out), "--reference", "ref"]
    if problem == "file":
        out.write_text("")
    elif problem != "missing":
        out.mkdir()
    if problem in ("reference", "resamples"):
        (out / "ref").mkdir()
        (out / "ref" / "scores.json").write_text(json.dumps([{"name": "a", "iou": 0.5}]))
        argv[2] = "absent" if problem == "reference" else "ref"
    if problem == "resamples":
        argv += ["--resamples", "0"]
    assert compare_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and len(captured.err.splitlines()) == 1
    assert captured.out == ""


def test_a_method_that_fails_is_reported_and_the_others_still_scored(tmp_path, monkeypatch, capsys):
    import eval.run

    real = eval.run.run_in_process

    def failing_dense_crf(fn, name, *args):
        if name == "dense_crf":
            raise ChildError("run_method raised MemoryError: imitated\n(traceback)")
        return real(fn, name, *args)

    monkeypatch.setattr(eval.run, "run_in_process", failing_dense_crf)
    data, out = big_folder(tmp_path / "val", n=2), tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--methods", "coarse,dense_crf,guided_filter"]
    assert main(argv) == 1
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["coarse", "guided_filter"]
    captured = capsys.readouterr()
    assert "error: dense_crf failed: run_method raised MemoryError: imitated" in captured.err
    assert "failed dense_crf: run_method raised MemoryError: imitated" in captured.out


def test_inference_fields_reach_every_airm_method(tiny_checkpoint):
    from eval.methods import build_method

    checkpoints = {"airm": tiny_checkpoint, "tiny": tiny_checkpoint}
    for name in ("airm", "airm_exhaustive", "tiny"):
        refine = build_method(
            name, checkpoints=checkpoints, inference={"min_step": 1.0, "tile_context": 16}
        )
        options = refine.__self__.options  # the Refiner's
        assert (options.min_step, options.tile_context) == (1.0, 16)


def test_a_folder_without_pairs_exits_2(tmp_path):
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2


def test_paired_bootstrap_sees_a_consistent_gain_and_not_noise(tmp_path):
    from eval.compare import compare, paired_bootstrap
    from eval.compare import main as compare_main

    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.95, 200)
    better = paired_bootstrap(base + 0.01, base)  # every image one point better
    assert better.low > 0.99 - 1e-9 and better.high < 1.01 + 1e-9 and abs(better.mean - 1) < 1e-9
    noise = paired_bootstrap(base + rng.normal(0, 0.02, 200), base)
    assert noise.low < 0 < noise.high
    for method, shift in (("ref", 0.0), ("up", 0.02)):
        (tmp_path / method).mkdir()
        scores = [
            {"name": f"i{i}", "iou": b + shift, "boundary_accuracy": None if i == 0 else b}
            for i, b in enumerate(base)
        ]
        (tmp_path / method / "scores.json").write_text(json.dumps(scores))
    d = compare(tmp_path, "up", "ref")
    assert d["iou"].low > 1.9 and abs(d["mba"].mean) < 1e-9
    assert compare_main([str(tmp_path), "--reference", "ref"]) == 0
    assert compare_main([str(tmp_path), "--reference", "absent"]) == 2


def test_compare_by_kind_of_coarse_mask_shows_a_trade_that_ties_overall(tmp_path, capsys):
    from eval.compare import compare, group_names
    from eval.compare import main as compare_main

    base = np.random.default_rng(1).uniform(0.6, 0.9, 100)
    for method in ("ref", "trade"):
        (tmp_path / method).mkdir()
        scores = []
        for i, b in enumerate(base):
            kind = "lowres" if i % 2 else "perturb"
            shift = 0.0 if method == "ref" else (0.03 if kind == "lowres" else -0.03)
            scores.append(
                {
                    "name": f"i{i}",
                    "source": "s",
                    "coarse_kind": kind,
                    "iou": b + shift,
                    "boundary_accuracy": b,
                }
            )
        (tmp_path / method / "scores.json").write_text(json.dumps(scores))
    groups = group_names({s["name"]: s for s in scores}, "coarse")
    assert sorted(groups) == ["s / lowres", "s / perturb"] and len(groups["s / lowres"]) == 50
    assert abs(compare(tmp_path, "trade", "ref")["iou"].mean) < 1e-9
    lowres = compare(tmp_path, "trade", "ref", only=groups["s / lowres"])["iou"]
    assert lowres.n == 50 and lowres.low > 2.9
    assert compare(tmp_path, "trade", "ref", only=groups["s / perturb"])["iou"].high < -2.9
    capsys.readouterr()
    assert compare_main([str(tmp_path), "--reference", "ref", "--by", "coarse"]) == 0
    table = capsys.readouterr().out
    assert "| trade | all | 100 |" in table and "| trade | s / lowres | 50 | +3.00" in table
    assert "| trade | s / perturb | 50 | -3.00" in table
    # The last column counts the images whose IoU went down: every perturbed one.
    assert [line.rsplit("|", 2)[1].strip() for line in table.splitlines()[2:]] == ["50", "0", "50"]


def benchmark_argv(checkpoint, out, *extra: str) -> list[str]:
    """python -m eval.benchmark's arguments for two small sizes on the CPU, JSON to out."""
    argv = ["--checkpoint", str(checkpoint), "--devices", "cpu", "--repeats", "1"]
    argv += ["--sizes", "96x144,192x288", "--folder-size", "96x144", "--cascadepsp-size", "none"]
    return [*argv, "--json", str(out), *extra]


def test_benchmark_reports_every_measurement(tmp_path, tiny_checkpoint, capsys):
    """python -m eval.benchmark on two small sizes: each size timed in its own process, the
    rounds of both sizes in one process, the folder, and the ratios printed from them."""
    from eval.benchmark import main as benchmark

    out = tmp_path / "bench.json"
    assert benchmark(benchmark_argv(tiny_checkpoint, out, "--rounds", "2", "--folder", "2")) == 0
    results = json.loads(out.read_text())
    assert [(r["method"], r.get("size")) for r in results] == [
        ("airm", [96, 144]),
        ("airm", [192, 288]),
        ("rounds", None),
        ("folder", [96, 144]),
    ]
    rounds = results[2]
    assert rounds["sizes"] == [[96, 144], [192, 288]]
    assert len(rounds["seconds"]) == 2 and all(
        len(r) == 2 and min(r) > 0 for r in rounds["seconds"]
    )
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 for r in results if "peak_rss_mb" in r)
    printed = capsys.readouterr().out
    assert "192x288 vs 96x144: 4.0x the pixels" in printed
    assert "192x288 vs 96x144, 2 rounds in one process:" in printed
    assert [r["options"]["band"] for r in results if "options" in r] == [InferenceOptions.band] * 3


def test_a_benchmark_measurement_that_fails_is_reported_and_the_rest_still_run(
    tmp_path, tiny_checkpoint, monkeypatch, capsys
):
    import eval.benchmark
    from eval.benchmark import main as benchmark

    real = eval.benchmark.run_in_process

    def larger_size_fails(fn, job):
        if job.get("size") == [192, 288]:
            raise ChildError("measure_airm's measurement process ended without a result: signal 9")
        return real(fn, job)

    monkeypatch.setattr(eval.benchmark, "run_in_process", larger_size_fails)
    out = tmp_path / "bench.json"
    argv = benchmark_argv(tiny_checkpoint, out, "--rounds", "0", "--folder", "1", "--compare")
    assert benchmark(argv) == 1
    results = json.loads(out.read_text())
    assert [(r["method"], r.get("size"), "failed" in r) for r in results] == [
        ("airm", [96, 144], False),
        ("exhaustive", [96, 144], False),
        ("agreement", [96, 144], False),
        ("folder", [96, 144], False),
        ("airm", [192, 288], True),
        ("exhaustive", [192, 288], True),
    ]
    captured = capsys.readouterr()
    assert "error: measure_airm failed: measure_airm's measurement process" in captured.err
    assert "failed: {'device': 'cpu', 'size': [192, 288], 'method': 'airm'" in captured.out


def test_benchmark_times_every_pixel_when_asked(tmp_path, tiny_checkpoint, capsys):
    from eval.benchmark import main as benchmark

    out = tmp_path / "bench.json"
    argv = benchmark_argv(tiny_checkpoint, out, "--rounds", "1", "--folder", "1", "--every-pixel")
    assert benchmark(argv) == 0
    results = json.loads(out.read_text())
    assert [r["method"] for r in results] == ["airm", "airm", "rounds", "folder"]
    options = [r["options"] for r in results if "options" in r]
    assert len(options) == 3
    assert all((o["band"], o["first_band"], o["tile_size"]) == (None, None, 512) for o in options)
    assert "every pixel" in capsys.readouterr().out


def test_airm_variants_switch_off_the_shortcuts_they_name():
    from airm.inference import InferenceOptions
    from eval.methods import AIRM_OPTIONS

    default = InferenceOptions()
    options = {name: make(precision="float32") for name, make in AIRM_OPTIONS.items()}
    shortcuts = {name: (o.band, o.first_band, o.tile_size) for name, o in options.items()}
    queried_band = (default.band, default.first_band)
    assert shortcuts["airm"] == (*queried_band, default.tile_size)
    assert shortcuts["airm_untiled"] == (*queried_band, None)
    assert shortcuts["airm_exhaustive"] == (None, None, None)
    assert shortcuts["airm_every_pixel"] == (None, None, default.tile_size)
    assert all(o.precision == "float32" for o in options.values())
    # Other fields pass through; a mode's own fields win.
    exhaustive = AIRM_OPTIONS["airm_exhaustive"](min_step=1.0, band=4)
    assert (exhaustive.min_step, exhaustive.band) == (1.0, None)
    assert InferenceOptions.exhaustive() == AIRM_OPTIONS["airm_exhaustive"]()
    assert InferenceOptions.every_pixel() == AIRM_OPTIONS["airm_every_pixel"]()


def test_every_pixel_gap_counts_the_errors_only_one_path_makes(tmp_path, tiny_checkpoint, capsys):
    from eval.every_pixel import BINS, image_gap
    from eval.every_pixel import main as every_pixel

    yy, xx = np.mgrid[:200, :200]
    truth = (yy - 100) ** 2 + (xx - 100) ** 2 < 40**2
    coarse = truth.copy()
    default = truth.copy()
    default[100, 138:140] = False  # two pixels wrong on the default path only
    every = truth.copy()
    every[5:15, 5:15] = True  # a blob far from the object: 100 false foreground pixels
    every[100, 61] = False  # one false background pixel at the boundary
    gap = image_gap(truth, coarse, default, every)
    # The blob lies 82 to 94 px from the coarse boundary: all in the 48-96 bin.
    assert BINS[4:] == (48, 96) and list(gap.false_fg) == [0, 0, 0, 0, 100, 0]
    assert list(gap.wrong_default) == [2, 0, 0, 0, 0, 0]
    assert list(gap.wrong_every) == [1, 0, 0, 0, 100, 0]
    assert gap.false_bg.sum() == 1 and gap.false_bg[0] == 1
    assert gap.fixed == 2 and gap.extra == 99
    assert gap.inter_every == truth.sum() - 1 and gap.union_every == truth.sum() + 100

    data, out = tmp_path / "val", tmp_path / "out"
    data.mkdir()
    image = np.where(truth[..., None], 200, 30).astype(np.uint8).repeat(3, axis=2)
    Image.fromarray(image).save(data / "c-0_im.png")
    for suffix, mask in (("gt", truth), ("seg", coarse)):
        Image.fromarray(mask.astype(np.uint8) * 255).save(data / f"c-0_{suffix}.png")
    for method, mask in (("airm", default), ("airm_exhaustive", every)):
        (out / method).mkdir(parents=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / method / "c-0_mask.png")
    argv = [str(out), "--data", str(data), "--rerun", "1", "--checkpoint", str(tiny_checkpoint)]
    assert every_pixel(argv) == 0
    report = capsys.readouterr().out
    assert "| false fg | 0 | 0 | 0 | 0 | 100 | 0 | 100 |" in report
    assert "| c-0 | 99 | 100 | 1 |" in report
    assert "| all wrong, airm_exhaustive | 1 | 0 | 0 | 0 | 100 | 0 | 101 |" in report
    assert "images with more pixels wrong on airm_exhaustive than on airm: 1, 99 more" in report
    assert report.count("| 2 | 101 |") == 3  # the rows of source c and of all, and the rerun's
    assert "| pooled IoU, airm | airm_exhaustive | airm minus airm_exhaustive |" in report
    # The rerun's row: the wrong pixels of both paths, then its own.
    assert "| c-0 | 2 | 101 |" in report
    assert every_pixel([str(out), "--data", str(data), "--every", "missing"]) == 2


def test_a_checkpoint_that_does_not_load_exits_2_before_the_reports(tmp_path, capsys):
    from eval.every_pixel import main as every_pixel
    from eval.last_scale import main as last_scale

    data, out = big_folder(tmp_path / "val", n=1), tmp_path / "out"
    for method in ("airm", "airm_exhaustive"):  # the masks the report reads
        (out / method).mkdir(parents=True)
        (out / method / "d-0_mask.png").write_bytes((data / "d-0_seg.png").read_bytes())
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    for argv in (
        [str(out), "--data", str(data), "--rerun", "1", "--checkpoint", str(broken)],
        ["--data", str(data), "--checkpoint", str(broken)],
        ["--data", str(data), "--checkpoint", str(tmp_path / "missing.safetensors")],
    ):
        main_of = every_pixel if "--rerun" in argv else last_scale
        assert main_of(argv) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("error: ") and len(captured.err.splitlines()) == 1
        assert captured.out == ""


def test_last_scale_scores_the_handed_on_truth_and_one_full_resolution_pass(
    tmp_path, tiny_checkpoint, capsys
):
    from airm.api import get_refiner
    from airm.inference import scale_sizes
    from airm.perturb import handed_on
    from eval.last_scale import last_scale_only
    from eval.last_scale import main as last_scale

    data = big_folder(tmp_path / "val", n=2)
    last = last_scale_only(get_refiner(str(tiny_checkpoint), "cpu"))
    options = last.options
    assert options.first_band == options.band and options.first_trust == 1
    assert not options.coarse_band
    assert scale_sizes(60, 80, options) == [(60, 80)] and last.max_pixels is None

    assert last_scale(["--data", str(data), "--checkpoint", str(tiny_checkpoint)]) == 0
    report = capsys.readouterr().out
    # The input row is the truth, 2 times coarser, scored against itself.
    inter = union = 0
    for i in range(2):
        truth = np.array(Image.open(data / f"d-{i}_gt.png")) > 127
        counts = iou_counts(handed_on(truth, 2.0) > 0.5, truth)
        inter, union = inter + counts[0], union + counts[1]
    row = next(line for line in report.splitlines() if line.startswith("| all | 2 |"))
    assert row.split("|")[3].strip().startswith(f"{100 * inter / union:.2f} / ")
    assert "| even | 1 |" in report and "| odd | 1 |" in report
    assert last_scale(["--data", str(tmp_path / "missing")]) == 2
    assert last_scale(["--data", str(data), "--factor", "0.5"]) == 2


def test_handed_on_keeps_a_mask_at_factor_one_and_softens_it_coarser():
    from airm.perturb import handed_on

    yy, xx = np.mgrid[:90, :120]
    truth = (yy - 45) ** 2 + (xx - 60) ** 2 < 30**2
    assert np.array_equal(handed_on(truth, 1.0), truth.astype(np.float32))
    coarser = handed_on(truth, 3.0)
    assert ((coarser > 0) & (coarser < 1)).any() and ((coarser > 0.5) == truth).mean() > 0.98
