import json
import shutil
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from airm import Refiner
from airm.checkpoint import load_model, read_checkpoint, save_model
from airm.cli import train as train_cli
from airm.data import find_pairs
from airm.inference import InferenceOptions, scale_sizes
from airm.io import read_image, read_mask
from tools import (
    average_weights,
    bench_loader,
    bench_refine,
    bench_train_step,
    coarse_set,
    lease_job,
    step_kernels,
    window_area,
)
from tools import hypernetwork as hyper_tool
from tools.pack_data import main, pack

from conftest import disc_pair, tiny_model


def big_folder(root, sizes, *, coarse=False):
    root.mkdir()
    for i, (height, width) in enumerate(sizes):
        image, mask = disc_pair(height, width, seed=i)
        image = image.copy()
        image += np.random.default_rng(i).integers(0, 60, image.shape, dtype=np.uint8)  # noisy
        Image.fromarray(image).save(root / f"pair{i}_im.jpg", quality=95)
        Image.fromarray(mask).save(root / f"pair{i}_gt.png")
        if coarse:
            Image.fromarray(255 - mask).save(root / f"pair{i}_seg.png")
    names = [{"name": f"pair{i}", "source": "made"} for i in range(len(sizes))]
    (root / "manifest.json").write_text(json.dumps(names))


def unpack(parts, dest):
    dest.mkdir()
    for part in parts:
        with tarfile.open(part) as tar:
            tar.extractall(dest, filter="data")
    return find_pairs(dest)


def test_packed_parts_hold_every_pair_shrunk_and_stay_under_the_limit(tmp_path):
    sizes = [(900, 1200), (300, 200), (640, 480), (1000, 500), (700, 700)]
    big_folder(tmp_path / "data", sizes, coarse=True)
    parts = pack(tmp_path / "data", tmp_path / "parts", max_side=400, quality=80, part_mb=0.12)
    assert len(parts) > 1
    assert all(part.stat().st_size <= 0.12 * 2**20 for part in parts)
    pairs = unpack(parts, tmp_path / "out")
    assert [p.name for p in pairs] == [f"pair{i}" for i in range(len(sizes))]
    for pair, (height, width) in zip(pairs, sizes, strict=True):
        assert pair.source == "made" and pair.coarse is not None
        image = read_image(pair.image)
        scale = min(1.0, 400 / max(height, width))
        assert image.shape == (round(height * scale), round(width * scale), 3)
        for path in (pair.mask, pair.coarse):
            mask = read_mask(path)
            assert mask.shape == image.shape[:2]
            assert set(np.unique(mask)) <= {0.0, 1.0}
    truth = read_mask(pairs[1].mask)  # 300 x 200: kept at its size, so exactly the original
    assert np.array_equal(truth, read_mask(tmp_path / "data" / "pair1_gt.png"))


def test_a_pair_larger_than_a_part_is_an_error(tmp_path, capsys):
    big_folder(tmp_path / "data", [(600, 800)])
    assert main([str(tmp_path / "data"), str(tmp_path / "parts"), "--part-mb", "0.01"]) == 2
    assert "needs more than" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), str(tmp_path / "parts")]) == 2


def test_loader_benchmark_times_both_modes(tmp_path, capsys):
    big_folder(tmp_path / "data", [(120, 160), (100, 90), (130, 130)])
    argv = [str(tmp_path / "data"), "--workers", "0", "--batch-size", "2"]
    assert bench_loader.main([*argv, "--warmup", "1", "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 pairs, batch 2, 0 workers" in out
    assert "decoded" in out and "cached" in out and "cached / decoded:" in out


def test_training_step_benchmark_times_both_modes(tmp_path, capsys):
    big_folder(tmp_path / "data", [(120, 160), (100, 90), (130, 130)])
    argv = [str(tmp_path / "data"), "--batch-size", "2", "--warmup", "1", "--steps", "1"]
    assert bench_train_step.main([*argv, "--rounds", "1", "--precision", "float32"]) == 0
    out = capsys.readouterr().out
    assert "round 1 glibc default:" in out and "round 1      retained:" in out
    assert "retained / default speed:" in out


def test_refinement_benchmark_alternates_settings_against_the_default(tmp_path, capsys):
    weights = tmp_path / "tiny.safetensors"
    save_model(tiny_model("airm_efficientnet_lite0"), weights)
    settings = bench_refine.parse_settings(
        [f"tiny={weights}"], ["tiny:band=4", 'f32:precision="float32"', "tiny:first_band=null"]
    )
    assert list(settings) == ["default", "tiny", "f32"]
    assert settings["tiny"].checkpoint == weights and settings["f32"].checkpoint is None
    assert settings["tiny"].inference == {"band": 4, "first_band": None}
    # Each round against the same round's baseline: a machine that slows down in round 2 does
    # not move the ratio, which a ratio of medians would.
    assert bench_refine.ratio_summary([2.0, 4.0, 2.2], [1.0, 2.0, 1.0]) == (2.0, 2.0, 2.2)
    for bad in (
        ([], []),  # nothing to compare
        ([f"tiny:{weights}"], []),
        ([f"tiny={tmp_path / 'missing.safetensors'}"], []),
        ([], ["band=4"]),
        ([], ["x:nonexistent=1"]),
        ([], ["x:band=-3"]),
    ):
        with pytest.raises(ValueError):
            bench_refine.parse_settings(*bad)
    argv = ["--checkpoint", f"tiny={weights}", "--inference", "tiny:band=4", "--sizes", "48x64"]
    assert bench_refine.main([*argv, "--rounds", "2", "--threads", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| HxW | default s | tiny s | tiny / default |"
    assert table[2].startswith("| 48x64 | ") and table[2].count("|") == 5
    assert bench_refine.main(["--inference", "x:band=oops"]) == 2


def test_window_counts_are_the_work_of_each_scale():
    image, coarse = disc_pair(500, 700)
    refiner = Refiner(tiny_model("airm_efficientnet_lite0"), device="cpu")
    every = refiner.with_options(InferenceOptions.exhaustive())
    scales = window_area.count_scales(every, image, coarse)
    # Every pixel queried, each scale one window: the counts are the scales' areas.
    sizes = scale_sizes(500, 700, every.options)
    assert [s["size"] for s in scales] == sizes
    assert [s["windows"] for s in scales] == [1] * len(sizes)
    assert [s["queries"] for s in scales] == [h * w for h, w in sizes]
    assert [round(s["encoded_mp"] * 1e6) for s in scales] == [h * w for h, w in sizes]
    assert [round(s["least_mp"] * 1e6) for s in scales] == [h * w for h, w in sizes]
    assert "encode" not in vars(refiner.model)  # the counting is undone
    banded = window_area.count_scales(refiner, image, coarse)  # the default: band and tiles
    assert 0 < window_area.totals(banded)["queries"] < window_area.totals(scales)["queries"]
    # Windows hold each queried pixel with its context, so they cover at least the least area.
    assert all(0 < s["least_mp"] <= s["encoded_mp"] for s in banded)


def test_least_area_is_the_queried_pixels_grown_by_the_context():
    queried = torch.zeros(50, 60, dtype=torch.bool)
    queried[10, 20] = True  # a 9 x 9 square around it
    queried[47, 58] = True  # clipped at the corner: 7 x 6
    assert window_area.least_area(queried, 4) == 81 + 42
    assert window_area.least_area(torch.zeros(5, 5, dtype=torch.bool), 4) == 0


def test_window_area_prints_each_scale_and_the_ratios(tiny_checkpoint, capsys):
    argv = ["--checkpoint", str(tiny_checkpoint), "--sizes", "240x360,480x720"]
    assert window_area.main([*argv, "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "  480x720     480x720" in out
    assert "last size against the first (all scales): windows" in out


def test_average_weights_is_the_mean_of_every_float_tensor(tmp_path, capsys):
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    models = [tiny_model("airm_efficientnet_lite0") for _ in paths]
    for i, (model, path) in enumerate(zip(models, paths, strict=True)):
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.add_(i)  # weights and running statistics 0, 1 and 2 apart
                else:
                    tensor.fill_(10 * i + 1)  # batch counts differ
        save_model(model, path)
    out = tmp_path / "soup.safetensors"
    assert average_weights.main([str(out), *map(str, paths)]) == 0
    _, averaged, metadata = read_checkpoint(out)
    first = models[0].state_dict()
    for name, tensor in averaged.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, first[name] + 1)
        else:
            assert (tensor == 1).all(), name
    assert metadata["averaged_from"] == "0.safetensors,1.safetensors,2.safetensors"
    assert load_model(out).config == models[0].config


def test_average_weights_refuses_different_networks(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_model(tiny_model("airm_efficientnet_lite0"), a)
    save_model(tiny_model("airm_efficientnet_lite0", rank=2), b)
    assert average_weights.main([str(tmp_path / "out.safetensors"), str(a), str(b)]) == 2
    assert "is another network" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_hypernetwork_adds_the_norm_and_folds_it_back_to_the_same_network(tmp_path, capsys):
    plain = tiny_model("airm_efficientnet_lite0")
    with torch.no_grad():
        plain.hypernetwork.head.weight.normal_(0.0, 0.5)  # an image-dependent modulation
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("plain", "normed", "back")}
    save_model(plain, paths["plain"])
    big_folder(tmp_path / "data", [(120, 160), (150, 100), (130, 130)])
    add = ["norm", str(paths["plain"]), str(paths["normed"]), "--data", str(tmp_path / "data")]
    assert hyper_tool.main([*add, "--items", "4", "--crop-size", "64"]) == 0
    assert "input norm added over 3 items" in capsys.readouterr().out
    normed = load_model(paths["normed"])
    assert normed.config == replace(plain.config, hyper_input_norm=True)
    norm = normed.hypernetwork.norm
    assert (norm.running_var != 1.0).any() and (norm.running_mean != 0.0).any()
    image, mask = torch.rand(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        expected = plain(image, mask).logits
        torch.testing.assert_close(normed(image, mask).logits, expected, atol=1e-5, rtol=1e-5)
    # A run with frozen norms keeps the statistics, so they fold back into the head exactly.
    assert hyper_tool.main(["fold", str(paths["normed"]), str(paths["back"])]) == 0
    config, back, _ = read_checkpoint(paths["back"])
    assert config == plain.config
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(back[name], tensor, atol=1e-5, rtol=1e-5)


def test_hypernetwork_statistics_are_those_of_the_head_input():
    model = hyper_tool.with_input_norm(tiny_model("airm_efficientnet_lite0"))
    image, mask = torch.rand(5, 3, 64, 64), (torch.rand(5, 1, 64, 64) > 0.5).float()
    mean, var = hyper_tool.head_input_statistics(
        model, [(image[:2], mask[:2]), (image[2:], mask[2:])]
    )
    with torch.no_grad():
        encoded = model.encoder(
            torch.cat([(image - model.pixel_mean) / model.pixel_std, mask * 2 - 1], 1)
        )
        h = model.hypernetwork.body(model.pixel_features(encoded.stages))
    torch.testing.assert_close(mean, h.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var, h.var(0, correction=0), atol=1e-5, rtol=1e-5)


def test_hypernetwork_share_bakes_one_modulation_into_a_shared_function(tmp_path, capsys):
    airmf = tiny_model("airm_efficientnet_lite0")
    with torch.no_grad():
        airmf.hypernetwork.head.weight.normal_(0.0, 0.5)  # an image-dependent modulation
    image, mask = torch.rand(1, 3, 64, 64), (torch.rand(1, 1, 64, 64) > 0.5).float()
    mean, _ = hyper_tool.head_input_statistics(airmf, [(image, mask)])
    sirmf = hyper_tool.shared(airmf, mean)  # this image's own modulation, for every window
    assert sirmf.hypernetwork is None
    assert sirmf.config == replace(airmf.config, modulation=False)
    other = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = airmf(image, mask).logits
        torch.testing.assert_close(sirmf(image, mask).logits, expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(sirmf(other, mask).logits, airmf(other, mask).logits, atol=1e-3)
    # The command takes the mean over training items and writes a SIRMF checkpoint.
    path, out = tmp_path / "airmf.safetensors", tmp_path / "sirmf.safetensors"
    save_model(airmf, path)
    big_folder(tmp_path / "data", [(120, 160), (150, 100), (130, 130)])
    argv = ["share", str(path), str(out), "--data", str(tmp_path / "data"), "--crop-size", "64"]
    assert hyper_tool.main(argv) == 0
    assert "mean h over 3 items (SIRMF)" in capsys.readouterr().out
    assert load_model(out).config == sirmf.config


def test_hypernetwork_refuses_a_network_it_cannot_change(tmp_path, capsys):
    plain, normed = tmp_path / "plain.safetensors", tmp_path / "normed.safetensors"
    save_model(tiny_model("airm_efficientnet_lite0"), plain)
    save_model(tiny_model("airm_efficientnet_lite0", hyper_input_norm=True), normed)
    assert hyper_tool.main(["fold", str(plain), str(tmp_path / "out.safetensors")]) == 2
    assert "has no hypernetwork input norm" in capsys.readouterr().err
    add = ["norm", str(normed), str(tmp_path / "out.safetensors"), "--data", str(tmp_path)]
    assert hyper_tool.main(add) == 2
    assert "already has the hypernetwork's input norm" in capsys.readouterr().err
    sirmf = tmp_path / "sirmf.safetensors"
    save_model(tiny_model("sirmf_efficientnet_lite0"), sirmf)
    share = ["share", str(sirmf), str(tmp_path / "out.safetensors"), "--data", str(tmp_path)]
    assert hyper_tool.main(share) == 2
    assert "has no hypernetwork: its f is shared already" in capsys.readouterr().err
    add = ["norm", str(sirmf), str(tmp_path / "out.safetensors"), "--data", str(tmp_path)]
    assert hyper_tool.main(add) == 2
    assert "has no hypernetwork: its f is shared" in capsys.readouterr().err
    missing = [
        "share",
        str(plain),
        str(tmp_path / "out.safetensors"),
        "--data",
        str(tmp_path / "no"),
    ]
    assert hyper_tool.main(missing) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_coarse_set_makes_val_like_coarse_masks_per_source(tmp_path, capsys):
    big_folder(tmp_path / "data", [(120, 160), (150, 100), (130, 130), (100, 140), (90, 120)])
    sources = ["alpha", "alpha", "alpha", "beta", "beta"]
    entries = [{"name": f"pair{i}", "source": s} for i, s in enumerate(sources)]
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(entries))
    argv = [str(tmp_path / "data"), str(tmp_path / "out"), "--per-source", "2", "--seed", "3"]
    assert coarse_set.main(argv) == 0
    assert "alpha: 2 pairs" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    # Two of alpha's three (the first and the last), both of beta's; kinds alternate per source.
    assert [(m["name"], m["source"], m["coarse"]) for m in manifest] == [
        ("pair0", "alpha", "lowres"),
        ("pair2", "alpha", "perturb"),
        ("pair3", "beta", "lowres"),
        ("pair4", "beta", "perturb"),
    ]
    pairs = {p.name: p for p in find_pairs(tmp_path / "out")}
    assert sorted(pairs) == ["pair0", "pair2", "pair3", "pair4"]
    for m in manifest:
        pair = pairs[m["name"]]
        assert pair.coarse_kind == m["coarse"] and pair.source == m["source"]
        source = tmp_path / "data" / f"{m['name']}_im.jpg"
        assert pair.image.read_bytes() == source.read_bytes()
        truth = read_mask(pair.mask) > 0.5
        assert np.array_equal(truth, read_mask(tmp_path / "data" / f"{m['name']}_gt.png") > 0.5)
        coarse = read_mask(pair.coarse) > 0.5
        iou = (coarse & truth).sum() / (coarse | truth).sum()
        assert abs(iou - m["coarse_iou"]) < 1e-3 and (m["height"], m["width"]) == truth.shape
        if m["coarse"] == "perturb":
            assert 0.5 < iou < coarse_set.PERTURB_IOU[1]
    # The same seed makes the same masks; a folder with files in it is refused, untouched.
    assert coarse_set.main([*argv[:1], str(tmp_path / "again"), *argv[2:]]) == 0
    for m in manifest:
        name = f"{m['name']}_seg.png"
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    assert coarse_set.main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before


def test_step_kernels_counts_what_a_step_runs(tmp_path, capsys):
    big_folder(tmp_path / "data", [(120, 160), (100, 90), (130, 130)])
    argv = [str(tmp_path / "data"), "--batch-size", "2", "--warmup", "1", "--steps", "1"]
    assert step_kernels.main([*argv, "--precision", "float32", "--backends", "eager"]) == 0
    out = capsys.readouterr().out
    assert "airm_efficientnet_lite0, batch 2, float32, on cpu" in out
    count = int(out.split("eager: ")[1].split(" operators that compute")[0].replace(",", ""))
    assert count > 500  # forward, loss and backward of a network of 61 convolutions


@pytest.mark.parametrize("backend", ["inductr", "inductor:fast", "eager:reduce-overhead"])
def test_step_kernels_refuses_an_unknown_backend_before_starting(tmp_path, capsys, backend):
    with pytest.raises(SystemExit) as exc:
        step_kernels.main([str(tmp_path), "--backends", "eager", backend])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--backends {backend}:" in err
    assert "Traceback" not in err


def test_lease_job_retries_eager_in_the_minutes_the_compiled_try_left():
    calls, now = [], [100.0]

    def runner(argv, minutes=3, compiled_status=1):
        calls.append(argv)
        now[0] += minutes * 60
        return compiled_status if "--compile" in argv else 0

    def jobs(compile_flags, run=runner):
        calls.clear()
        return lease_job.run_jobs(
            ["--out", "x"], minutes=7, compile_flags=compile_flags, runner=run, clock=lambda: now[0]
        )

    flags = ["--compile", "inductor", "--compile-mode", "reduce-overhead"]
    assert jobs(flags) == 0  # the compiled try failed after 3 minutes: eager for the other 4
    assert calls == [
        ["--out", "x", "--resume", *flags, "--time-limit", "7"],
        ["--out", "x", "--resume", "--time-limit", "4.00"],
    ]
    assert jobs(flags, lambda argv: runner(argv, compiled_status=0)) == 0
    assert len(calls) == 1  # a compiled try that ends as asked is the only one
    assert jobs([]) == 0
    assert calls == [["--out", "x", "--resume", "--time-limit", "7"]]
    assert jobs(flags, lambda argv: runner(argv, minutes=8, compiled_status=3)) == 3
    assert len(calls) == 1  # no minutes left for an eager try
    assert jobs(flags, lambda argv: runner(argv, minutes=0, compiled_status=2)) == 2
    assert len(calls) == 1  # train.py refused the run: eager would be refused too


def test_lease_job_brings_last_pt_in_pieces_that_join_into_it(tmp_path, capsys):
    data, run, bring = tmp_path / "data", tmp_path / "run", tmp_path / "bring"
    big_folder(data, [(72, 96), (80, 64)])
    bring.mkdir()
    (bring / "last.pt.part-009").write_bytes(b"stale")  # an earlier split's piece goes
    train_args = [
        "--data",
        str(data),
        "--out",
        str(run),
        "--iterations",
        "3",
        "--log-interval",
        "1",
    ]
    train_args += ["--batch-size", "1", "--crop-size", "64", "--query-size", "32", "--workers", "0"]
    argv = ["--minutes", "5", "--bring", str(bring), "--compile", "eager", "--piece-mb", "16"]
    assert lease_job.main([*argv, "--", *train_args], runner=train_cli.main) == 0
    out = capsys.readouterr().out
    pieces = sorted(bring.glob("last.pt.part-*"))
    size = (run / "last.pt").stat().st_size
    assert len(pieces) == -(-size // (16 * 2**20)) > 1
    assert b"".join(p.read_bytes() for p in pieces) == (run / "last.pt").read_bytes()
    assert (bring / "log.jsonl").read_text() == (run / "log.jsonl").read_text()
    assert "cat last.pt.part-* > last.pt" in out
    assert (bring / "gpu.csv").exists() == (shutil.which("nvidia-smi") is not None)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--minutes", "0", "--bring", "b", "--", "--data", "d", "--out", "o"],
            "--minutes must be > 0",
        ),
        (["--minutes", "7", "--bring", "b"], "give train.py's arguments after --"),
        (
            [
                "--minutes",
                "7",
                "--bring",
                "b",
                "--",
                "--data",
                "d",
                "--out",
                "o",
                "--time-limit",
                "3",
            ],
            "--time-limit",
        ),
        (  # an abbreviation, as argparse takes it
            ["--minutes", "7", "--bring", "b", "--", "--data", "d", "--out", "o", "--time", "3"],
            "--time-limit",
        ),
        (
            ["--minutes", "7", "--bring", "b", "--", "--data", "d", "--out", "o", "--compile"],
            "--compile",
        ),
        (
            ["--minutes", "7", "--bring", "b", "--", "--data", "d", "--out", "o", "--resume"],
            "--resume",
        ),
        (["--minutes", "7", "--bring", "b", "--piece-mb", "20", "--", "--out", "o"], "--piece-mb"),
        (
            ["--minutes", "7", "--bring", "b", "--compile", "nope", "--", "--out", "o"],
            "unknown torch.compile backend",
        ),
    ],
)
def test_lease_job_refuses_arguments_before_running_anything(tmp_path, capsys, argv, message):
    def runner(argv):
        raise AssertionError("nothing should run")

    assert lease_job.main(argv, runner=runner) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
