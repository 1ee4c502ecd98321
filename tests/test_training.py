import copy
import functools
import json
import os
import socket

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import airm
from airm import load_model, metrics
from airm.checkpoint import CheckpointError, read_checkpoint
from airm.data import RefinementDataset, find_pairs, make_coarse
from airm.losses import (
    LossWeights,
    affinity_labels,
    affinity_loss,
    refinement_losses,
    sobel_magnitude,
)
from airm.morphology import nonzero_points
from airm.perturb import cascade_mask, lowres_mask, perturb_mask
from airm.training import (
    RunRecord,
    StepSampler,
    TrainConfig,
    TrainingObjective,
    adam,
    export_training_state,
    float32_depthwise,
    parameter_groups,
    prepare_model,
    run_record,
    step_objective,
    train,
    training_autocast,
    training_items,
    training_loader,
    training_step,
)

from conftest import TINY, disc_pair, tiny_model


@pytest.fixture
def big_folder(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for i in range(6):
        image, _ = disc_pair(80 + 8 * i, 96, seed=i)
        truth = image[..., 0] > 120
        Image.fromarray(image).save(root / f"s{i}_im.jpg")
        Image.fromarray(truth.astype(np.uint8) * 255).save(root / f"s{i}_gt.png")
        Image.fromarray(np.roll(truth, 3, axis=1).astype(np.uint8) * 255).save(
            root / f"s{i}_seg.png"
        )
    return root


def tiny_config(data, out, **kw) -> TrainConfig:
    fields = dict(
        data=(str(data),),
        out=str(out),
        batch_size=2,
        iterations=4,
        crop_size=64,
        query_size=32,
        workers=0,
        log_interval=1,
        checkpoint_interval=100,
        model_overrides=tuple(TINY.items()),
    )
    return TrainConfig(**{**fields, **kw})


def test_dataset_items(big_folder):
    pairs = find_pairs(big_folder)
    assert len(pairs) == 6 and all(p.coarse is not None for p in pairs)
    image, coarse, gt = RefinementDataset(pairs, crop_size=64)[0]
    assert image.shape == (3, 64, 64) and coarse.shape == gt.shape == (1, 64, 64)
    assert 0 <= image.min() and image.max() <= 1 and set(gt.unique().tolist()) <= {0.0, 1.0}


def _has_boundary(mask: torch.Tensor) -> bool:
    return bool(mask.min() != mask.max())


def bright_object_pairs(root, truth: np.ndarray, name: str = "a"):
    """Write one pair whose image is bright where `truth` is and dark elsewhere; its pairs."""
    root.mkdir(exist_ok=True)
    image = np.where(truth[..., None], 230, 30).astype(np.uint8).repeat(3, axis=2)
    Image.fromarray(image).save(root / f"{name}_im.png")
    Image.fromarray(truth.astype(np.uint8) * 255).save(root / f"{name}_gt.png")
    return find_pairs(root)


def test_far_crops_hold_no_boundary_and_near_crops_do(tmp_path):
    # A strip as tall as the crop (so no rescaling) with a disc at one end: a crop can lie far
    # from its outline or on it.
    yy, xx = np.mgrid[:64, :600]
    pairs = bright_object_pairs(tmp_path, (yy - 32) ** 2 + (xx - 520) ** 2 < 24**2)

    def crops(far_fraction: float) -> list[torch.Tensor]:
        dataset = RefinementDataset(pairs, crop_size=64, far_fraction=far_fraction)
        items = []
        for epoch in range(12):
            dataset.set_epoch(epoch)
            items.append(dataset[0])
        return items

    far = crops(1.0)
    assert not any(_has_boundary(gt) or _has_boundary(coarse > 0.5) for _, coarse, gt in far)
    near = crops(0.0)
    assert sum(_has_boundary(gt) for _, _, gt in near) >= 6
    with pytest.raises(ValueError, match="far_fraction"):
        RefinementDataset(pairs, far_fraction=1.5)


def test_copy_paste_makes_the_pasted_object_the_target():
    from airm.data import paste_object

    rng = np.random.default_rng(3)
    photo = np.full((120, 160, 3), 40, np.uint8)
    yy, xx = np.mgrid[:90, :90]
    ring = ((yy - 45) ** 2 + (xx - 45) ** 2 < 35**2) & ((yy - 45) ** 2 + (xx - 45) ** 2 > 15**2)
    source = np.zeros((90, 90, 3), np.uint8)
    source[ring] = (250, 10, 10)
    composite, target = paste_object(photo, source, ring, rng)
    assert composite.shape == photo.shape and target.shape == photo.shape[:2]
    assert 0.05 < target.mean() < 0.6
    # Where the object is (alpha > 0.5) its colour outweighs the photograph's, and elsewhere not.
    assert (composite[target][:, 0] >= 145).all() and (composite[~target][:, 0] <= 145).all()
    assert (composite[target][:, 0] == 250).mean() > 0.5
    # its hole is background again: the mask's shape was pasted, not its bounding box
    hole = cv2.dilate(target.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0
    inner = ndimage_fill(target) & hole
    assert inner.sum() > 100 and (composite[inner] == 40).all()


def ndimage_fill(mask: np.ndarray) -> np.ndarray:
    """Pixels enclosed by `mask` (flood fill from the border)."""
    filled = mask.astype(np.uint8).copy()
    flood = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.uint8)
    cv2.floodFill(filled, flood, (0, 0), 1)
    return filled == 0


def test_paste_fraction_in_the_dataset(big_folder):
    pairs = find_pairs(big_folder)
    plain = RefinementDataset(pairs, crop_size=64)
    pasted = RefinementDataset(pairs, crop_size=64, paste_fraction=1.0)
    assert all(a.shape == b.shape for a, b in zip(plain[0], pasted[0], strict=True))
    assert not torch.equal(plain[0][2], pasted[0][2])
    with pytest.raises(ValueError, match="paste_fraction"):
        RefinementDataset(pairs, paste_fraction=-0.1)


def test_whole_views_show_the_image_at_the_first_scales_size(tmp_path):
    # A 128 x 128 pair whose object is the left half: seen whole with 64 px crops, the image
    # is halved and the crop is all of it, so its truth is exactly half foreground.
    root = tmp_path / "half"
    root.mkdir()
    truth = np.zeros((128, 128), bool)
    truth[:, :64] = True
    image = np.where(truth[..., None], 200, 40).astype(np.uint8).repeat(3, axis=2)
    Image.fromarray(image).save(root / "h_im.png")
    Image.fromarray(truth.astype(np.uint8) * 255).save(root / "h_gt.png")
    pairs = find_pairs(root)

    def foreground(dataset: RefinementDataset) -> set[float]:
        fractions = set()
        for epoch in range(24):
            dataset.set_epoch(epoch)
            _, _, gt = dataset[0]
            assert gt.shape == (1, 64, 64)
            fractions.add(round(gt.mean().item(), 4))
        return fractions

    assert foreground(RefinementDataset(pairs, crop_size=64, whole_fraction=1.0)) == {0.5}
    assert len(foreground(RefinementDataset(pairs, crop_size=64))) > 1
    with pytest.raises(ValueError, match="whole_fraction"):
        RefinementDataset(pairs, whole_fraction=1.5)


def test_cached_pairs_give_the_same_items_and_cannot_be_altered(big_folder):
    pairs = find_pairs(big_folder)
    options = dict(crop_size=64, far_fraction=0.3, paste_fraction=0.5, seed=3)
    decoded = RefinementDataset(pairs, **options)
    cached = RefinementDataset(pairs, cache=True, cache_threads=2, **options)
    assert decoded.cached is None and decoded.cached_bytes == 0
    assert cached.cached_bytes == sum(i.nbytes + g.nbytes for i, g in cached.cached)
    for epoch in range(3):
        decoded.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(len(pairs)):
            assert all(
                torch.equal(a, b) for a, b in zip(decoded[index], cached[index], strict=True)
            )
    image, gt = cached.cached[0]
    with pytest.raises(ValueError, match="read-only"):
        image[0, 0] = 0
    with pytest.raises(ValueError, match="read-only"):
        gt[0, 0] = True


def test_query_windows_reach_the_crop_borders_only_when_asked():
    from airm.training import query_window

    def tops(anywhere: float) -> np.ndarray:
        config = TrainConfig(data=("x",), out="y", query_anywhere=anywhere)
        return np.array([query_window(step, config)[:2] for step in range(300)])

    central, anywhere = tops(0.0), tops(1.0)
    assert central.min() >= 56 - 28 and central.max() <= 56 + 28  # 112 of 224, jittered
    assert anywhere.min() == 0 and anywhere.max() == 224 - 112
    half = tops(0.5)
    assert 0.2 < ((half < 28) | (half > 84)).any(axis=1).mean() < 0.6


def test_perturbation_reaches_its_target():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:200, :200]
    gt = (yy - 100) ** 2 + (xx - 100) ** 2 < 60**2
    coarse = perturb_mask(gt, rng, iou_target=0.85)
    iou = (coarse & gt).sum() / (coarse | gt).sum()
    assert 0.6 < iou < 0.85


def test_cascade_masks_are_the_truth_soft_and_nearly_right():
    # What a later scale of inference is given: the truth at a coarser scale, enlarged back.
    yy, xx = np.mgrid[:200, :200]
    gt = (yy - 100) ** 2 + (xx - 100) ** 2 < 60**2
    near = np.abs(np.hypot(yy - 100, xx - 100) - 60)  # distance to the truth's boundary
    for seed in range(8):
        coarse = cascade_mask(gt, np.random.default_rng(seed))
        assert coarse.dtype == np.float32 and coarse.shape == gt.shape
        assert coarse.min() >= 0.0 and coarse.max() <= 1.0
        soft = (coarse > 0.02) & (coarse < 0.98)
        assert soft.any() and (near[soft] <= 12).all()  # soft only along the boundary
        binary = coarse > 0.5
        assert (binary & gt).sum() / (binary | gt).sum() > 0.97


def test_cascade_fraction_replaces_the_coarse_mask_only(big_folder):
    pairs = find_pairs(big_folder)
    plain = RefinementDataset(pairs, crop_size=64)
    cascade = RefinementDataset(pairs, crop_size=64, cascade_fraction=1.0)
    replaced = 0
    for i in range(len(pairs)):
        (image_a, coarse_a, gt_a), (image_b, coarse_b, gt_b) = plain[i], cascade[i]
        assert torch.equal(image_a, image_b) and torch.equal(gt_a, gt_b)
        replaced += not torch.equal(coarse_a, coarse_b)
        binary = coarse_b > 0.5
        union = (binary | (gt_b > 0.5)).sum().item()
        assert union == 0 or (binary & (gt_b > 0.5)).sum().item() / union > 0.8
    assert replaced > 0
    assert RefinementDataset(pairs, crop_size=64, cascade_fraction=0.0)[0][1].equal(plain[0][1])
    with pytest.raises(ValueError, match="cascade_fraction"):
        RefinementDataset(pairs, cascade_fraction=2.0)


def test_nonzero_points_are_numpys_nonzero():
    rng = np.random.default_rng(0)
    sparse = rng.random((70, 90)) < 0.05
    for mask in (sparse, sparse.astype(np.uint8) * 7, sparse[::2, ::-1], np.zeros((5, 6), bool)):
        ys, xs = nonzero_points(mask)
        expected = np.nonzero(mask)
        assert np.array_equal(ys, expected[0]) and np.array_equal(xs, expected[1])


def test_sampler_resumes_where_it_stopped():
    whole = list(StepSampler(10, batch_size=3, rank=0, world=1, seed=1, start_step=0, iterations=7))
    tail = list(StepSampler(10, batch_size=3, rank=0, world=1, seed=1, start_step=4, iterations=7))
    assert whole[4:] == tail
    ranks = [
        list(StepSampler(10, batch_size=2, rank=r, world=2, seed=1, start_step=0, iterations=2))
        for r in (0, 1)
    ]
    assert not set(sum(ranks[0], [])) & set(sum(ranks[1], []))


def test_losses_and_affinity_labels():
    gt = torch.zeros(1, 1, 32, 32)
    gt[..., :, :16] = 1
    pos, neg = affinity_labels(gt, (2, 2), radius=1)
    assert pos[0].tolist() == [
        [False, False, True, False],
        [False, False, False, True],
        [True, False, False, False],
        [False, True, False, False],
    ]
    assert neg[0, 0, 1] and not neg[0, 0, 3]  # diagonal cells are farther than radius 1
    generator = torch.Generator().manual_seed(0)
    affinity = torch.rand(2, 4, 4, generator=generator, requires_grad=True)
    pairs = tuple(torch.rand(2, 4, 4, generator=generator) < 0.3 for _ in range(2))
    expected = (1 - affinity)[pairs[0]].mean() + affinity[pairs[1]].mean()
    torch.testing.assert_close(affinity_loss(affinity, *pairs), expected)
    none = torch.zeros(2, 4, 4, dtype=torch.bool)
    empty = affinity_loss(affinity, none, none)
    empty.backward()  # no pairs: zero, and still part of the graph
    assert empty.item() == 0.0 and torch.equal(affinity.grad, torch.zeros_like(affinity))
    perfect = refinement_losses(gt * 40 - 20, gt, LossWeights())
    wrong = refinement_losses(20 - gt * 40, gt, LossWeights())
    assert perfect.total < 0.05 < wrong.total
    # A weight of zero (`train --loss affinity=0`) leaves the affinity loss reported but out of
    # the total.
    grid = torch.rand(1, 1, 32, 32, generator=generator)
    with_affinity = refinement_losses(
        grid, gt, LossWeights(), affinity=affinity, affinity_size=(2, 2)
    )
    without = refinement_losses(
        grid, gt, LossWeights(affinity=0), affinity=affinity, affinity_size=(2, 2)
    )
    assert without.affinity.item() == with_affinity.affinity.item() > 0
    expected = with_affinity.total - LossWeights().affinity * with_affinity.affinity
    torch.testing.assert_close(without.total, expected)


def test_resume_continues_exactly(big_folder, tmp_path):
    straight = train(tiny_config(big_folder, tmp_path / "a"))
    train(tiny_config(big_folder, tmp_path / "b"), stop_at=2)
    assert not (tmp_path / "b" / "final.safetensors").exists()
    log = tmp_path / "b" / "log.jsonl"
    with log.open("a") as f:  # as a run killed after step 3, past its checkpoint at 2, leaves it
        f.write(json.dumps({"event": "train", "step": 3, "total": -1.0}) + "\n")
        f.write('{"event": "train", "st')  # a line cut short by the kill
    resumed = train(tiny_config(big_folder, tmp_path / "b"), resume=True)
    a, b = load_model(straight).state_dict(), load_model(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["event"] for x in records[:1]] == ["config"]
    assert [x["step"] for x in records if x["event"] == "train"] == [1, 2, 3, 4]  # each once
    assert all(x["total"] > 0 for x in records if x["event"] == "train")
    assert [(x["event"], x["step"]) for x in records if x["event"] in ("start", "end")] == [
        ("start", 0),
        ("end", 2),
        ("start", 2),
        ("end", 4),
    ]
    one, two = run_record(tmp_path / "a" / "log.jsonl"), run_record(log)
    assert (one.step, one.samples, one.jobs) == (4, 8, 1)
    assert (two.step, two.samples, two.jobs) == (4, 8, 2)  # steps 3 and 4 counted once
    assert two.seconds > 0 and two.devices[0].endswith(f"{torch.get_num_threads()} threads")
    train(tiny_config(big_folder, tmp_path / "c"), stop_at=2)
    (tmp_path / "c" / "log.jsonl").unlink()  # the log did not travel with the checkpoint
    train(tiny_config(big_folder, tmp_path / "c"), resume=True)
    lost = run_record(tmp_path / "c" / "log.jsonl")  # a log of its own, from step 2
    assert (lost.step, lost.samples, lost.seconds, lost.jobs) == (4, 8, None, 1)


def test_run_record_sums_the_jobs_that_made_a_run(tmp_path):
    """Samples and wall time over jobs of different sizes, a stopped job's lost steps not
    counted; a log from before jobs were recorded gives its steps and no time."""
    config = {"event": "config", "train": {"variant": "v", "batch_size": 4}}
    records = [
        config,
        {"event": "start", "step": 0, "device": "GPU", "world": 1, "time": 100.0},
        {"event": "train", "step": 10, "time": 110.0},  # checkpointed at 10, then stopped
        {"event": "start", "step": 10, "device": "GPU", "world": 2, "time": 200.0},
        {"event": "val", "step": 30, "time": 250.0},
        {"event": "end", "step": 30, "time": 261.0},
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"event": "tr')
    run = run_record(log)
    assert (run.variant, run.step, run.jobs) == ("v", 30, 2)
    assert run.samples == 10 * 4 + 20 * 4 * 2
    assert run.seconds == pytest.approx(10 + 61)
    assert run.devices == ("GPU", "2 x GPU")
    log.write_text(json.dumps(config) + "\n" + json.dumps({"event": "train", "step": 20}) + "\n")
    old = run_record(log)
    assert (old.samples, old.seconds, old.devices) == (80, None, ())
    late = [config, {**records[3], "world": 1}, records[5]]  # begun at a resumption
    log.write_text("".join(json.dumps(r) + "\n" for r in late))
    late_run = run_record(log)
    assert (late_run.samples, late_run.seconds) == (30 * 4, None)
    log.write_text(json.dumps({"event": "train", "step": 20}) + "\n")
    with pytest.raises(ValueError, match="no config record"):
        run_record(log)


def test_a_field_missing_from_an_older_log_counts_as_its_default():
    from eval.budget import budget_differences

    config = json.loads(tiny_config("d", "o").to_json())
    older = {k: v for k, v in config.items() if k != "soft_masks"}

    def record(train: dict) -> RunRecord:
        return RunRecord("v", 10, 80, None, (), train)

    assert budget_differences({"a": record(config), "b": record(older)}) == []
    soft = {**config, "soft_masks": True}
    assert budget_differences({"a": record(soft), "b": record(older)}) == [
        "soft_masks (a true, b false)"
    ]


def test_the_budget_table_gives_each_runs_cost_scores_and_difference(big_folder, tmp_path, capsys):
    from eval.budget import main as budget_main
    from eval.run import main as eval_main

    a = train(tiny_config(big_folder, tmp_path / "a"))
    train(tiny_config(big_folder, tmp_path / "b", seed=1), stop_at=2)
    b = train(tiny_config(big_folder, tmp_path / "b", seed=1), resume=True)
    out = tmp_path / "e"
    argv = ["--data", str(big_folder), "--out", str(out), "--methods", "coarse"]
    assert eval_main([*argv, "--checkpoint", f"a={a}", "--checkpoint", f"b={b}"]) == 0
    capsys.readouterr()
    runs = [f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}"]
    assert budget_main([str(out), "--reference", "a", *runs]) == 0
    table = capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ")
    }
    assert cells["b"][:3] == ["b", "airm_efficientnet_lite0", "8"]  # 4 steps of 2, two jobs
    assert cells["b"][4].endswith("threads") and cells["b"][5] == f"{rows['b']['iou']:.2f}"
    assert cells["coarse input"][5] == f"{rows['coarse']['iou']:.2f}"
    assert cells["a"][-1] == "" and cells["b"][-1].startswith(("+", "-"))  # b against a
    assert "Not an equal budget: the runs differ in seed (a 0, b 1)." in table
    assert budget_main([str(out), "--reference", "a", runs[0]]) == 0
    assert "An equal budget" in capsys.readouterr().out
    assert budget_main([str(out), "--reference", "c", *runs]) == 2
    assert budget_main([str(out), "--reference", "a", f"a={tmp_path}"]) == 2  # no log there
    assert "error:" in capsys.readouterr().err


def test_the_weights_average_is_validated_exported_and_resumed_exactly(big_folder, tmp_path):
    """With ema_decay the run exports (and validates) the exponential moving average of its
    weights, started from step 1's; the trained weights are those of a run without it; a
    resumed run ends where a straight one does."""
    decay = 0.6
    config = functools.partial(tiny_config, big_folder, iterations=3, ema_decay=decay)
    straight = train(config(tmp_path / "a", val=str(big_folder), val_interval=3))
    trained = []  # the trained weights after steps 1, 2 and 3
    for stop in (1, 2):
        train(config(tmp_path / f"s{stop}"), stop_at=stop)
        trained.append(torch.load(tmp_path / f"s{stop}" / "last.pt", weights_only=True)["model"])
    trained.append(torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"])
    floats = [k for k, v in trained[0].items() if v.is_floating_point()]
    expected = {k: trained[0][k] for k in floats}
    for weights in trained[1:]:
        expected = {k: decay * v + (1 - decay) * weights[k] for k, v in expected.items()}
    exported = read_checkpoint(straight)[1]
    assert all(torch.allclose(exported[k], expected[k], atol=1e-6) for k in floats)
    assert any(not torch.allclose(exported[k], trained[2][k]) for k in floats)
    best = read_checkpoint(tmp_path / "a" / "best.safetensors")[1]  # validated at step 3
    assert all(torch.equal(best[k], exported[k]) for k in exported)
    plain = train(tiny_config(big_folder, tmp_path / "p", iterations=3))
    assert all(torch.equal(v, trained[2][k]) for k, v in read_checkpoint(plain)[1].items())
    resumed = read_checkpoint(train(config(tmp_path / "s2"), resume=True))[1]
    assert all(torch.equal(resumed[k], exported[k]) for k in exported)
    with pytest.raises(ValueError, match="ema_decay"):
        train(config(tmp_path / "bad", ema_decay=1.0))
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_an_unfinished_run_exports_what_its_final_checkpoint_would_hold(big_folder, tmp_path):
    """`export_training_state` writes from last.pt the weights `train` exports: the moving
    average where the run keeps one (a finished run's last.pt gives its final.safetensors to
    the bit), else, or when asked, the trained weights; files that are not a training state
    are refused."""
    config = functools.partial(tiny_config, big_folder, iterations=3)
    final = read_checkpoint(train(config(tmp_path / "ema", ema_decay=0.6)))
    assert export_training_state(tmp_path / "ema" / "last.pt", tmp_path / "ema.safetensors") == 3
    exported = read_checkpoint(tmp_path / "ema.safetensors")
    assert exported[0] == final[0] and exported[2]["step"] == "3"
    assert all(torch.equal(v, final[1][k]) for k, v in exported[1].items())
    trained = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)["model"]
    export_training_state(tmp_path / "ema" / "last.pt", tmp_path / "t.safetensors", average=False)
    exported = read_checkpoint(tmp_path / "t.safetensors")[1]
    assert all(torch.equal(v, trained[k]) for k, v in exported.items())
    assert any(not torch.equal(v, final[1][k]) for k, v in exported.items())
    train(config(tmp_path / "plain"), stop_at=2)
    state = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)
    assert export_training_state(tmp_path / "plain" / "last.pt", tmp_path / "p.safetensors") == 2
    assert all(
        torch.equal(v, state["model"][k])
        for k, v in read_checkpoint(tmp_path / "p.safetensors")[1].items()
    )
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save({"step": 1}, tmp_path / "dict.pt")
    for bad, message in [
        (tmp_path / "missing.pt", "not found"),
        (tmp_path / "junk.pt", "not a readable training state"),
        (tmp_path / "dict.pt", "not an airm training state"),
        (tmp_path / "ema.safetensors", "an inference checkpoint already"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            export_training_state(bad, tmp_path / "out.safetensors")
    with pytest.raises(CheckpointError, match="would overwrite"):
        export_training_state(tmp_path / "ema" / "last.pt", tmp_path / "ema" / "last.pt")
    assert not (tmp_path / "out.safetensors").exists()


class _ThreadsSeen(RefinementDataset):
    """Items that say how many threads OpenCV has where they are made."""

    def __getitem__(self, index):
        return torch.tensor(cv2.getNumThreads())


def test_loader_workers_make_items_with_one_opencv_thread(big_folder, tmp_path):
    """Workers forked from a process whose OpenCV pool has run (setting the threads inside
    such a worker waits forever) make their items on one OpenCV thread; the training process
    keeps its own setting."""
    config = tiny_config(big_folder, tmp_path, iterations=2)
    items = _ThreadsSeen(find_pairs(big_folder), crop_size=64)
    loader = training_loader(
        items, config, rank=0, world=1, start=0, stop=2, workers=1, pin_memory=False
    )
    loader.timeout = 60  # a worker stuck at its start fails the test instead of hanging it
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)  # what forked workers would inherit without the loader's setting
    try:
        big = np.random.default_rng(0).random((1500, 1500), dtype=np.float32)
        for _ in range(5):  # the pool's threads at work in this process
            cv2.GaussianBlur(big, (0, 0), 5)
        assert [batch.tolist() for batch in loader] == [[1, 1], [1, 1]]
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


def test_training_from_cached_pairs_gives_the_same_weights(big_folder, tmp_path):
    decoded = train(tiny_config(big_folder, tmp_path / "a"))
    cached = train(tiny_config(big_folder, tmp_path / "b", cache_images=True, workers=1))
    a, b = load_model(decoded).state_dict(), load_model(cached).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    logged = [x for x in lines if x["event"] == "train"]
    assert [x["step"] for x in logged] == [1, 2, 3, 4]  # log_interval=1
    assert all(x["samples_per_s"] == pytest.approx(2 * x["it_per_s"]) for x in logged)
    assert all(x["total"] > 0 and np.isfinite(x["total"]) for x in logged)


def test_bfloat16_training_learns_and_resumes_exactly(big_folder, tmp_path):
    """Mixed precision (what GPUs run by default) on the CPU: finite, and a resumed run
    ends with the same weights as a straight one, since weights and Adam stay float32."""
    config = functools.partial(tiny_config, big_folder, precision="bfloat16", iterations=3)
    straight = train(config(tmp_path / "a"))
    train(config(tmp_path / "b"), stop_at=1)
    resumed = train(config(tmp_path / "b"), resume=True)
    a, b = load_model(straight).state_dict(), load_model(resumed).state_dict()
    floats = [v for v in a.values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in floats)
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_model(train(config(tmp_path / "c", iterations=0))).state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)
    with pytest.raises(ValueError, match="precision"):
        train(config(tmp_path / "d", precision="float16"))


@pytest.mark.parametrize("variant", sorted(set(airm.VARIANTS) - {"airm_efficientnet_lite0"}))
def test_every_variant_trains_compiled_in_one_graph(variant):
    """The equal-budget runs train each variant with --compile: forward and loss traced whole
    (aot_eager, as inductor traces), one graph for every query window, eager's losses. (The
    default variant's gradients and compiled train() runs: the test below.)"""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()  # a graph of another variant's shared code is not this one's
    model = tiny_model(variant).train()
    eager = TrainingObjective(model, LossWeights(), None)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(
        TrainingObjective(copy.deepcopy(model), LossWeights(), None), backend=counter
    )
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 64, 64, generator=generator)
    coarse, gt = torch.rand(2, 2, 1, 64, 64, generator=generator)
    gt = (gt > 0.5).float()
    for top, left in [(0, 0), (24, 8), (5, 30)]:
        window = (torch.tensor(top), torch.tensor(left), 32, 32)
        torch.testing.assert_close(
            compiled(image, coarse, gt, window).stacked(),
            eager(image, coarse, gt, window).stacked(),
        )
    assert counter.frame_count == 1


def test_sobel_magnitude_is_the_sobel_convolution():
    x = torch.rand(2, 1, 17, 23, generator=torch.Generator().manual_seed(0))
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])[None, None] / 4
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = torch.nn.functional.conv2d(padded, kx)
    gy = torch.nn.functional.conv2d(padded, kx.transpose(-1, -2))
    expected = torch.sqrt(gx * gx + gy * gy + 1e-8)
    torch.testing.assert_close(sobel_magnitude(x), expected)


class _OffDevice(TorchDispatchMode):
    """Records every operator that is handed a tensor off the meta device."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in tree_flatten((args, kwargs))[0]:
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                self.seen.add((str(func), str(value.device), tuple(value.shape)))
        return func(*args, **kwargs)


@pytest.mark.parametrize("variant", sorted(airm.VARIANTS))
def test_a_training_step_needs_nothing_from_the_host(variant):
    """What `training_step` differentiates, run with the model and batch on the meta device
    (shapes without data): no tensor comes from elsewhere (a constant made on the host is
    copied to the GPU at every step, and such a copy waits for the device), and nothing is
    read back (`.item()`, a boolean mask's selection: they fail on meta). So eager training
    on a GPU can run ahead of it, step after step."""
    model = tiny_model(variant).train().to("meta")
    objective = TrainingObjective(model, LossWeights(), None)
    image = torch.empty(2, 3, 64, 64, device="meta")
    coarse, gt = torch.empty(2, 2, 1, 64, 64, device="meta")
    top, left = torch.zeros(2, dtype=torch.int64, device="meta").unbind()
    with _OffDevice() as off:
        objective(image, coarse, gt, (top, left, 32, 32)).total.backward()
    assert off.seen == set()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_train_and_the_step_tools_prepare_a_step_from_the_config_alone(tmp_path):
    """`prepare_model` and `step_objective` are how `train` and `tools/step_setup.py` both
    make a step, so what the tools measure is what training runs: channels-last, training
    mode, float32 depthwise convolutions only for bfloat16 on a CPU; compiled only when the
    config names a backend (lazily: nothing compiles here), CUDA graphs only with
    reduce-overhead."""
    cpu = torch.device("cpu")
    for precision, swapped in [("float32", False), ("bfloat16", True)]:
        model = tiny_model("airm_efficientnet_lite0").eval()
        config = tiny_config(tmp_path, tmp_path, precision=precision)
        autocast = prepare_model(model, config, cpu)
        assert autocast == (torch.bfloat16 if swapped else None)
        assert model.training
        assert float32_depthwise(model) == 0 if swapped else float32_depthwise(model) > 0
        weight = next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        assert weight.is_contiguous(memory_format=torch.channels_last)
    model = tiny_model("airm_efficientnet_lite0")
    objective, graphs = step_objective(model, tiny_config(tmp_path, tmp_path), None)
    assert type(objective) is TrainingObjective and not graphs
    config = tiny_config(tmp_path, tmp_path, compile="aot_eager")
    objective, graphs = step_objective(model, config, None)
    assert isinstance(objective._orig_mod, TrainingObjective) and not graphs
    config = tiny_config(tmp_path, tmp_path, compile="inductor", compile_mode="reduce-overhead")
    assert step_objective(model, config, None)[1]


def test_compiled_training_computes_what_eager_training_does(big_folder, tmp_path, monkeypatch):
    """--compile traces forward and loss (and so their backward) with torch.compile; here
    with the aot_eager backend, which traces them as inductor does but generates no code
    (seconds on a CPU instead of minutes). The same step's losses and gradients, to rounding,
    at three query windows, all run by the one graph compiled at the first (their offsets
    are tensors); a compiled run logs the eager run's losses and how it ran. An unknown
    backend, or a mode without inductor, is refused before anything is written."""
    from torch._dynamo.testing import CompileCounterWithBackend

    config = tiny_config(big_folder, tmp_path, iterations=2)
    batch = next(
        iter(
            training_loader(
                training_items(config),
                config,
                rank=0,
                world=1,
                start=0,
                stop=1,
                workers=0,
                pin_memory=False,
            )
        )
    )
    model = tiny_model("airm_efficientnet_lite0").train()
    twin = copy.deepcopy(model)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(TrainingObjective(twin, config.loss, None), backend=counter)
    for window in [(0, 0, 32, 32), (24, 8, 32, 32), (5, 30, 32, 32)]:
        losses = []
        for objective, params in [
            (TrainingObjective(model, config.loss, None), model),
            (compiled, twin),
        ]:
            optimizer = torch.optim.SGD(params.parameters(), lr=0.0)  # gradients only
            losses.append(
                training_step(objective, optimizer, batch, window, device=torch.device("cpu"))
            )
        torch.testing.assert_close(losses[1].stacked(), losses[0].stacked())
        # Some gradients are rounding noise (a bias before a batch norm), so the tolerance is
        # set by the largest one.
        scale = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5 * scale)
    assert counter.frame_count == 1  # one graph, forward and loss, for every window

    eager = train(tiny_config(big_folder, tmp_path / "e", iterations=2))
    real_compile, backends = torch.compile, []

    def spy(module, **kw):
        backends.append(kw["backend"])
        return real_compile(module, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    train(tiny_config(big_folder, tmp_path / "c", iterations=2, compile="aot_eager"))
    assert backends == ["aot_eager"]
    logs = [
        [json.loads(x) for x in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        for run in ("e", "c")
    ]
    totals = [[x["total"] for x in log if x["event"] == "train"] for log in logs]
    assert len(totals[1]) == 2 and totals[1] == pytest.approx(totals[0], rel=1e-4)
    assert logs[1][0]["train"]["compile"] == "aot_eager" and eager.is_file()
    with pytest.raises(ValueError, match="unknown torch.compile backend 'nope'"):
        train(tiny_config(big_folder, tmp_path / "x", compile="nope"))
    with pytest.raises(ValueError, match="modes are inductor's"):
        train(tiny_config(big_folder, tmp_path / "x", compile="aot_eager", compile_mode="default"))
    with pytest.raises(ValueError, match="needs a backend"):
        train(tiny_config(big_folder, tmp_path / "x", compile_mode="reduce-overhead"))
    assert not (tmp_path / "x").exists()


def test_adam_is_fused_where_pytorch_has_it_and_takes_the_same_steps():
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    ends = []
    for make in (adam, lambda groups, lr: torch.optim.Adam(groups, lr=lr, foreach=False)):
        params = [p.clone().requires_grad_() for p in start]
        optimizer = make([{"params": params}], 0.1)
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            optimizer.step()
        ends.append(params)
    assert optimizer.defaults["fused"] is None  # the reference, unfused
    assert adam([{"params": start}], 0.1).defaults["fused"] is (torch.__version__ >= "2.4")
    for fused, plain in zip(*ends, strict=True):
        torch.testing.assert_close(fused, plain)


@pytest.mark.parametrize("variant", ["airm_efficientnet_lite0", "airm_mit_b0"])
def test_depthwise_convolutions_train_in_float32_on_a_cpu(variant):
    """float32_depthwise changes no parameter and no state dict key; the convolutions it
    takes run float32 in training under CPU autocast and follow autocast in eval mode."""
    model = tiny_model(variant)
    keys, params = list(model.state_dict()), list(model.parameters())
    depthwise = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and 1 < m.groups == m.in_channels
    ]
    conv = next(m for m in depthwise if type(m) is torch.nn.Conv2d)  # no dynamic padding
    assert float32_depthwise(model) == len(depthwise) > 0
    assert float32_depthwise(model) == 0  # already done
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    x = torch.randn(2, conv.in_channels, 16, 16, dtype=torch.bfloat16)
    expected = torch.nn.functional.conv2d(
        x.float(), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = conv.train()(x)
        evaluated = conv.eval()(x)
    torch.testing.assert_close(trained, expected)
    assert trained.dtype == torch.float32 and evaluated.dtype == torch.bfloat16


def test_auto_precision_is_bfloat16_where_the_hardware_computes_it(monkeypatch):
    """Training's "auto" follows inference's: bfloat16 on GPUs and CPUs with native bfloat16
    arithmetic, float32 on others (which emulate it, slowly)."""
    config = TrainConfig(data=("data",), out="out")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert training_autocast(config, torch.device("cpu")) is None
    assert training_autocast(config, torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert training_autocast(config, torch.device("cpu")) == torch.bfloat16
    fp32 = TrainConfig(data=("data",), out="out", precision="float32")
    assert training_autocast(fp32, torch.device("cpu")) is None


def test_validation_is_logged(big_folder, tmp_path):
    config = tiny_config(
        big_folder, tmp_path / "v", iterations=2, val=str(big_folder), val_interval=2
    )
    train(config)
    log = (tmp_path / "v" / "log.jsonl").read_text()
    assert '"event": "val"' in log and '"coarse"' in log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(
    rank: int, world: int, port: int, config: TrainConfig, time_limits: tuple | None = None
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    train(config, time_limit=time_limits[rank] if time_limits else None)


def test_two_process_ddp_on_cpu(big_folder, tmp_path):
    config = tiny_config(big_folder, tmp_path / "ddp", iterations=3)
    mp.spawn(_ddp_worker, args=(2, _free_port(), config), nprocs=2, join=True)
    model = load_model(tmp_path / "ddp" / "final.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # Out of time by rank 0's clock, not by rank 1's: both stop where rank 0 says.
    config = tiny_config(big_folder, tmp_path / "limited", iterations=3, log_interval=2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), config, (0.0, 1e9)), nprocs=2, join=True)
    state = torch.load(tmp_path / "limited" / "last.pt", weights_only=True)
    assert state["step"] == 2 and not (tmp_path / "limited" / "final.safetensors").exists()


def test_a_time_limited_job_stops_at_a_log_line_and_resumes_exactly(big_folder, tmp_path):
    """time_limit: the job stops at the first log line past it, checkpointed, without
    exporting, and says so in its log; --resume then ends where a straight run does."""
    straight = train(tiny_config(big_folder, tmp_path / "a", log_interval=3))
    job = tiny_config(big_folder, tmp_path / "b", log_interval=3)
    assert train(job, time_limit=0) == tmp_path / "b" / "last.pt"  # out of time at once
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 3
    assert not (tmp_path / "b" / "final.safetensors").exists()
    assert train(job, resume=True, time_limit=3600) == tmp_path / "b" / "final.safetensors"
    assert not changed_tensors(straight, tmp_path / "b" / "final.safetensors")
    records = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    ends = [r for r in records if r["event"] == "end"]
    assert [(r["step"], r.get("stopped")) for r in ends] == [(3, "time_limit"), (4, None)]
    with pytest.raises(ValueError, match="time_limit"):
        train(tiny_config(big_folder, tmp_path / "x"), time_limit=-1)
    assert not (tmp_path / "x").exists()


def test_init_from_an_airm_checkpoint(big_folder, tmp_path):
    first = train(tiny_config(big_folder, tmp_path / "a", iterations=1))
    again = train(tiny_config(big_folder, tmp_path / "b", iterations=0, init=str(first)))
    a, b = load_model(first).state_dict(), load_model(again).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # --resume with no checkpoint yet (the first of several short jobs) still starts from init
    config = tiny_config(big_folder, tmp_path / "c", iterations=0, init=str(first))
    first_job = load_model(train(config, resume=True)).state_dict()
    assert all(torch.equal(a[k], first_job[k]) for k in a)
    assert '"event": "config"' in (tmp_path / "c" / "log.jsonl").read_text()


def changed_tensors(before, after) -> set[str]:
    """Names of the state tensors that differ between two checkpoints of one model."""
    a, b = load_model(before).state_dict(), load_model(after).state_dict()
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_train_only_changes_nothing_else_and_resumes_exactly(big_folder, tmp_path):
    gated = (*TINY.items(), ("skip_gate", True))
    start = train(tiny_config(big_folder, tmp_path / "a", iterations=0, model_overrides=gated))
    only = dict(model_overrides=gated, init=str(start), train_only=("skip_gate",), lr=1e-2)
    tuned = train(tiny_config(big_folder, tmp_path / "b", **only))
    changed = changed_tensors(start, tuned)
    # the gate learned (its own batch norm's statistics too); nothing else moved, the frozen
    # batch norms' running statistics included
    assert {"skip_gate.g.weight", "skip_gate.body.1.running_mean"} <= changed
    assert all(k.startswith("skip_gate.") for k in changed)
    train(tiny_config(big_folder, tmp_path / "c", **only), stop_at=2)
    resumed = train(tiny_config(big_folder, tmp_path / "c", **only), resume=True)
    assert not changed_tensors(tuned, resumed)
    with pytest.raises(ValueError, match="names no parameter"):
        train(tiny_config(big_folder, tmp_path / "d", **{**only, "train_only": ("nothing",)}))
    # a norm without parameters of its own still learns its statistics when its part is named
    normed = (*TINY.items(), ("hyper_input_norm", True))
    start = train(tiny_config(big_folder, tmp_path / "e", iterations=0, model_overrides=normed))
    hyper = dict(model_overrides=normed, init=str(start), train_only=("hypernetwork",))
    tuned = train(tiny_config(big_folder, tmp_path / "f", **hyper))
    changed = changed_tensors(start, tuned)
    assert "hypernetwork.norm.running_mean" in changed
    assert changed and all(k.startswith("hypernetwork.") for k in changed)


def test_frozen_norms_keep_every_running_statistic_and_learn_the_rest(big_folder, tmp_path):
    start = train(tiny_config(big_folder, tmp_path / "a", iterations=0))
    plain = changed_tensors(start, train(tiny_config(big_folder, tmp_path / "b", init=str(start))))
    frozen = dict(init=str(start), frozen_norms=True)
    tuned = train(tiny_config(big_folder, tmp_path / "c", **frozen))
    changed = changed_tensors(start, tuned)
    statistics = {k for k in plain if k.endswith(("running_mean", "running_var", "_tracked"))}
    assert statistics and not changed & statistics  # they moved without, and stay with
    assert changed == plain - statistics  # every parameter still learns
    norms = {k.rsplit(".", 1)[0] for k in statistics}
    assert {f"{n}.weight" for n in norms} & changed  # the norms' scales among them
    train(tiny_config(big_folder, tmp_path / "d", **frozen), stop_at=2)
    resumed = train(tiny_config(big_folder, tmp_path / "d", **frozen), resume=True)
    assert not changed_tensors(tuned, resumed)


def test_lowres_sides_set_how_good_the_imitated_segmenter_is(tmp_path):
    yy, xx = np.mgrid[:600, :600]
    angle = np.arctan2(yy - 300, xx - 300)
    star = np.hypot(yy - 300, xx - 300) < 150 + 90 * np.cos(7 * angle)  # thin arms
    rng = np.random.default_rng(0)
    scores = {
        sides: np.mean([metrics.iou(lowres_mask(star, rng, sides=sides), star) for _ in range(8)])
        for sides in ((48, 48), (400, 400))
    }
    assert scores[(400, 400)] > scores[(48, 48)] + 0.05
    # the default range is val's, and draws as before
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(make_coarse(star, a), make_coarse(star, b, lowres_sides=(48, 128)))
    pairs = bright_object_pairs(tmp_path / "disc", star[::4, ::4])
    config = tiny_config(tmp_path / "disc", tmp_path / "run", lowres_sides=(64, 256))
    assert training_items(config).lowres_sides == (64, 256)
    agreement = {}
    for sides in ((8, 8), (150, 150)):  # the pair is 150 px: the second is its truth
        items = RefinementDataset(pairs, crop_size=64, seed=2, lowres_sides=sides)
        agreement[sides] = []
        for epoch in range(16):
            items.set_epoch(epoch)
            _, coarse, gt = items[0]
            agreement[sides].append(metrics.iou(coarse[0].numpy() > 0.5, gt[0].numpy() > 0.5))
    assert np.mean(agreement[(150, 150)]) > np.mean(agreement[(8, 8)]) + 0.05
    for bad in ((4, 100), (100, 50)):
        with pytest.raises(ValueError, match="lowres_sides"):
            RefinementDataset(pairs, lowres_sides=bad)


def test_rescaled_items_keep_image_and_truth_aligned(tmp_path):
    # Only the crop's window is resized: the image and both masks must come out of the same
    # window by the same mapping, at every scale (a whole view shrinks this image 5 times).
    yy, xx = np.mgrid[:320, :400]
    pairs = bright_object_pairs(tmp_path / "disc", (yy - 160) ** 2 + (xx - 200) ** 2 < 100**2)
    dataset = RefinementDataset(pairs, crop_size=64, seed=4, whole_fraction=0.5)
    areas = []
    for epoch in range(24):
        dataset.set_epoch(epoch)
        img, coarse, gt = dataset[0]
        assert img.shape == (3, 64, 64) and coarse.shape == gt.shape == (1, 64, 64)
        bright = img.mean(0) > 0.5
        inner = torch.from_numpy(cv2.erode(gt[0].numpy(), np.ones((3, 3), np.uint8))) > 0.5
        outer = torch.from_numpy(cv2.dilate(gt[0].numpy(), np.ones((3, 3), np.uint8))) < 0.5
        assert bright[inner].all() and not bright[outer].any()
        areas.append(gt.sum().item())
    whole = np.pi * (100 * 64 / 320) ** 2  # the disc, shrunk with the image, inside the crop
    assert sum(abs(a - whole) < 0.1 * whole for a in areas) >= 4


def test_soft_masks_keep_the_covered_fraction_below_full_resolution(tmp_path):
    # A whole view shrinks this disc 5 times: thresholded, its truth is {0, 1}; soft, the
    # pixels on its outline hold the fraction covered, and the area is kept more closely.
    yy, xx = np.mgrid[:320, :400]
    pairs = bright_object_pairs(tmp_path / "disc", (yy - 160) ** 2 + (xx - 200) ** 2 < 100**2)
    hard = RefinementDataset(pairs, crop_size=64, seed=4, whole_fraction=1.0, paste_fraction=0)
    soft = RefinementDataset(
        pairs, crop_size=64, seed=4, whole_fraction=1.0, paste_fraction=0, soft_masks=True
    )
    whole = np.pi * (100 * 64 / 320) ** 2
    for epoch in range(4):
        hard.set_epoch(epoch)
        soft.set_epoch(epoch)
        (img_h, _, gt_h), (img_s, coarse_s, gt_s) = hard[0], soft[0]
        assert torch.equal(img_h, img_s)  # the same view: no draw more or less
        assert set(gt_h.unique().tolist()) == {0.0, 1.0}
        between = (gt_s > 0.02) & (gt_s < 0.98)
        assert between.sum() > 20 and torch.equal(gt_s > 0.5, gt_h > 0.5)
        error_soft, error_hard = abs(gt_s.sum().item() - whole), abs(gt_h.sum().item() - whole)
        assert error_soft < 2 and error_soft <= error_hard
        assert ((coarse_s > 0.02) & (coarse_s < 0.98)).any()
    full = RefinementDataset(pairs, crop_size=400, seed=4, soft_masks=True)
    assert set(full[0][2].unique().tolist()) == {0.0, 1.0}  # seen at full size: as it is


def test_rotated_items_keep_image_and_truth_aligned(tmp_path):
    # The object is bright and the background dark, so wherever an item's truth says object
    # its image must be bright: a rotation applied to one and not the other would show.
    yy, xx = np.mgrid[:96, :128]
    pairs = bright_object_pairs(tmp_path / "disc", (yy - 40) ** 2 + (xx - 70) ** 2 < 30**2)
    plain = RefinementDataset(pairs, crop_size=64, seed=1)
    turned = RefinementDataset(pairs, crop_size=64, seed=1, rotate_degrees=30)
    differ = 0
    for epoch in range(12):
        plain.set_epoch(epoch)
        turned.set_epoch(epoch)
        img, _, gt = turned[0]
        bright = img.mean(0) > 0.5
        inner = torch.from_numpy(cv2.erode(gt[0].numpy(), np.ones((3, 3), np.uint8))) > 0.5
        outer = torch.from_numpy(cv2.dilate(gt[0].numpy(), np.ones((3, 3), np.uint8))) < 0.5
        assert bright[inner].all() and not bright[outer].any()
        differ += not torch.equal(plain[0][2], gt)
    assert differ >= 6
    with pytest.raises(ValueError, match="rotate_degrees"):
        RefinementDataset(pairs, rotate_degrees=200)


def test_lr_scales_give_a_part_its_own_rate_and_resume_exactly(big_folder, tmp_path):
    model = tiny_model("airm_efficientnet_lite0", skip_gate=True)
    groups = parameter_groups(model, (("skip_gate", 10.0),))
    gate = {id(p) for p in model.skip_gate.parameters()}
    assert [g["lr_scale"] for g in groups] == [10.0, 1.0]
    assert {id(p) for p in groups[0]["params"]} == gate
    assert len(groups[1]["params"]) == len(list(model.parameters())) - len(gate)
    with pytest.raises(ValueError, match="names no parameter"):
        parameter_groups(model, (("no_such_part", 2.0),))
    scaled = dict(
        model_overrides=(*TINY.items(), ("skip_gate", True)), lr_scales=(("skip_gate", 10.0),)
    )
    straight = train(tiny_config(big_folder, tmp_path / "a", **scaled))
    train(tiny_config(big_folder, tmp_path / "b", **scaled), stop_at=2)
    resumed = train(tiny_config(big_folder, tmp_path / "b", **scaled), resume=True)
    a, b = load_model(straight).state_dict(), load_model(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the gate moved further from its start than at the shared rate
    plain = train(
        tiny_config(big_folder, tmp_path / "c", model_overrides=scaled["model_overrides"])
    )
    moved = {
        name: load_model(path).skip_gate.g.weight.abs().sum().item()
        for name, path in (("scaled", straight), ("plain", plain))
    }
    assert moved["scaled"] > 3 * moved["plain"]
