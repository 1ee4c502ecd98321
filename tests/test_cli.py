from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from airm.cli.refine import main
from airm.inference import InferenceOptions

from conftest import disc_pair, label_pair

FAST = ["--scales", "1"]


def cli_args(image, coarse, out, *extra) -> list[str]:
    return ["--image", str(image), "--coarse", str(coarse), "--out", str(out), *map(str, extra)]


def write_pair(folder, name, height=48, width=64, seed=0):
    image, coarse = disc_pair(height, width, seed=seed)
    Image.fromarray(image).save(folder / f"{name}.jpg")
    Image.fromarray(coarse).save(folder / f"{name}.png")


def test_single_pair(tmp_path, tiny_checkpoint):
    write_pair(tmp_path, "a")
    out = tmp_path / "out" / "a.png"
    rc = main(
        cli_args(
            str(tmp_path / "a.jpg"),
            str(tmp_path / "a.png"),
            str(out),
            "--checkpoint",
            str(tiny_checkpoint),
            *FAST,
        )
    )
    assert rc == 0
    mask = np.asarray(Image.open(out))
    assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255}


def test_inference_flags_reach_the_refiner(tmp_path, tiny_checkpoint, monkeypatch):
    from airm.cli import refine as cli

    seen = []
    make_settings = cli._make_settings
    monkeypatch.setattr(cli, "_make_settings", lambda a: seen.append(make_settings(a)) or seen[-1])
    write_pair(tmp_path, "a")
    pair = cli_args(tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "o.png")
    flags = ["--checkpoint", str(tiny_checkpoint), *FAST]
    extra = ["--precision", "float32", "--min-step", "1", "--first-trust", "2", "--band", "20"]
    assert main([*pair, *flags, *extra]) == 0
    assert main([*pair, *flags]) == 0
    assert main([*pair, *flags, "--every-pixel"]) == 0
    assert [s.refiner.options.precision for s in seen] == ["float32", "auto", "auto"]
    assert [s.refiner.options.min_step for s in seen] == [1.0, 1.5, 1.5]
    assert [s.refiner.options.first_trust for s in seen] == [2.0, 1.5, 1.5]
    assert [s.refiner.options.band for s in seen] == [20, InferenceOptions.band, None]
    assert seen[2].refiner.options == InferenceOptions.every_pixel(scales=(1.0,))
    with pytest.raises(SystemExit):
        main([*pair, *flags, "--precision", "float8"])


def test_one_pair_reports_one_line_unless_quiet(tmp_path, tiny_checkpoint, capsys):
    write_pair(tmp_path, "a")
    out = tmp_path / "out.png"
    args = cli_args(tmp_path / "a.jpg", tmp_path / "a.png", out, "--checkpoint", tiny_checkpoint)
    assert main([*args, *FAST]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{out}: 64x48 in ") and lines[0].endswith(" s"), lines[0]
    assert float(lines[0].split(" in ")[1].removesuffix(" s")) >= 0
    out.unlink()
    assert main([*args, *FAST, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert np.asarray(Image.open(out)).shape == (48, 64)


def test_a_failed_pair_prints_nothing_on_stdout(tmp_path, tiny_checkpoint, capsys):
    write_pair(tmp_path, "a")
    args = cli_args(tmp_path / "a.jpg", tmp_path / "missing.png", tmp_path / "o.png")
    assert main([*args, "--checkpoint", str(tiny_checkpoint)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error:")


def test_folders_keep_their_progress_bar_and_summary_quiet_drops_the_bar(
    tmp_path, tiny_checkpoint, capsys
):
    images, masks, out = make_folders(tmp_path, ["a", "b"])
    args = cli_args(images, masks, out, "--checkpoint", tiny_checkpoint, *FAST)
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # no line per pair: the bar and the summary say it
    assert "refining" in captured.err and "2/2" in captured.err
    assert "2 refined, 0 skipped, 0 failed, 0 unmatched" in captured.err
    assert main([*args, "--overwrite", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "refining" not in captured.err
    assert captured.err.strip() == "2 refined, 0 skipped, 0 failed, 0 unmatched"


def test_soft_output(tmp_path, tiny_checkpoint):
    write_pair(tmp_path, "a")
    out = tmp_path / "soft.png"
    assert (
        main(
            cli_args(
                str(tmp_path / "a.jpg"),
                str(tmp_path / "a.png"),
                str(out),
                "--soft",
                "--checkpoint",
                str(tiny_checkpoint),
                *FAST,
            )
        )
        == 0
    )
    assert len(np.unique(np.asarray(Image.open(out)))) > 2


def test_bad_input_keeps_the_existing_output(tmp_path, tiny_checkpoint, capsys):
    write_pair(tmp_path, "a")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    out = tmp_path / "keep.png"
    out.write_bytes(b"previous result")
    rc = main(
        cli_args(
            str(tmp_path / "a.jpg"),
            str(tmp_path / "small.png"),
            str(out),
            "--checkpoint",
            str(tiny_checkpoint),
        )
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "same size" in err and "Traceback" not in err
    assert out.read_bytes() == b"previous result"


def test_folders_resume_and_bad_files(tmp_path, tiny_checkpoint, capsys):
    images, masks, out = tmp_path / "im", tmp_path / "seg", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    for i, name in enumerate(["x", "y", "z"]):
        image, coarse = disc_pair(40, 56, seed=i)
        Image.fromarray(image).save(images / f"{name}_im.jpg")
        Image.fromarray(coarse).save(masks / f"{name}_seg.png")
    (images / "broken_im.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(masks / "broken_seg.png")
    args = cli_args(str(images), str(masks), str(out), "--checkpoint", str(tiny_checkpoint), *FAST)
    assert main(args) == 1  # one file failed, the others were written
    assert sorted(p.name for p in out.iterdir()) == ["x.png", "y.png", "z.png"]
    assert "broken_im.jpg" in capsys.readouterr().err
    before = (out / "x.png").stat().st_mtime_ns
    main(args)
    assert (out / "x.png").stat().st_mtime_ns == before  # finished outputs are skipped
    assert "3 outputs exist already" in capsys.readouterr().err


def test_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    write_pair(tmp_path, "a")
    rc = main(
        cli_args(
            str(tmp_path / "a.jpg"),
            str(tmp_path / "a.png"),
            str(tmp_path / "o.png"),
            "--checkpoint",
            str(tmp_path / "none.safetensors"),
        )
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not found" in err and "\n" not in err


def run_cli(checkpoint, image, coarse, out, *extra) -> int:
    """refine.py on one pair with `checkpoint`, at one scale (fast)."""
    return main(cli_args(image, coarse, out, "--checkpoint", checkpoint, *FAST, *extra))


def mask_encodings(coarse: np.ndarray) -> dict[str, Image.Image]:
    """The same binary mask saved in every encoding SPEC section 6 names."""
    binary = coarse > 0
    rgba = np.zeros((*binary.shape, 4), np.uint8)
    rgba[..., 3] = binary * 255
    return {
        "gray": Image.fromarray(binary.astype(np.uint8) * 255),
        "zero_one": Image.fromarray(binary.astype(np.uint8)),
        "rgb": Image.fromarray(np.repeat(binary[..., None], 3, axis=2).astype(np.uint8) * 255),
        "rgba": Image.fromarray(rgba, "RGBA"),
        "palette": Image.fromarray(binary.astype(np.uint8) * 3).convert("P"),
        "deep": Image.fromarray(binary.astype(np.uint16) * 65535),
    }


def test_every_mask_and_image_encoding_gives_the_same_output(tmp_path, tiny_checkpoint):
    image, coarse = disc_pair(40, 56)
    Image.fromarray(image).save(tmp_path / "rgb.png")
    gray = image.mean(axis=2).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    alpha = np.concatenate([image, np.full((40, 56, 1), 255, np.uint8)], axis=2)
    Image.fromarray(alpha, "RGBA").save(tmp_path / "rgba.png")
    outputs = {}
    for name, mask in mask_encodings(coarse).items():
        mask.save(tmp_path / f"mask_{name}.png")
        image, out = tmp_path / "rgb.png", tmp_path / f"out_{name}.png"
        assert run_cli(tiny_checkpoint, image, tmp_path / f"mask_{name}.png", out) == 0
        outputs[name] = np.asarray(Image.open(out))
    for name, out in outputs.items():
        assert np.array_equal(out, outputs["gray"]), name
    for name in ("gray", "gray16", "rgba"):
        coarse, out = tmp_path / "mask_gray.png", tmp_path / f"from_{name}.png"
        assert run_cli(tiny_checkpoint, tmp_path / f"{name}.png", coarse, out) == 0
        outputs[name] = np.asarray(Image.open(out))
    assert np.array_equal(outputs["gray16"], outputs["gray"])  # 16-bit = 8-bit * 257
    assert np.array_equal(outputs["rgba"], outputs["rgb"])  # an opaque alpha changes nothing


def test_exif_rotated_photo_is_refined_upright(tmp_path, tiny_checkpoint):
    image, coarse = disc_pair(40, 56)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 x 56, shown rotated to 56 x 40
    Image.fromarray(image).save(tmp_path / "r.jpg", exif=exif)
    Image.fromarray(np.rot90(coarse, -1).copy()).save(tmp_path / "upright.png")
    out = tmp_path / "out.png"
    assert run_cli(tiny_checkpoint, tmp_path / "r.jpg", tmp_path / "upright.png", out) == 0
    assert np.asarray(Image.open(out)).shape == (56, 40)


@pytest.mark.parametrize("value", [0, 255])
def test_empty_and_full_masks_come_back_unchanged_with_a_warning(
    tmp_path, tiny_checkpoint, capsys, value
):
    write_pair(tmp_path, "a")
    Image.fromarray(np.full((48, 64), value, np.uint8)).save(tmp_path / "flat.png")
    out = tmp_path / "out.png"
    assert run_cli(tiny_checkpoint, tmp_path / "a.jpg", tmp_path / "flat.png", out) == 0
    assert (np.asarray(Image.open(out)) == value).all()
    assert (
        capsys.readouterr().err.strip() == "warning: the coarse mask is empty or full; "
        "returning it unchanged"
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("huge", "above the limit"),
        ("truncated", "cannot read"),
        ("missing", "no such file"),
    ],
)
def test_bad_files_are_one_line_and_leave_the_output(
    tmp_path, tiny_checkpoint, capsys, damage, message
):
    write_pair(tmp_path, "a", height=96, width=128)
    image = tmp_path / "a.jpg"
    extra = []
    if damage == "huge":
        extra = ["--max-pixels", 96 * 128 - 1]
    elif damage == "truncated":
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 2])
    else:
        image = tmp_path / "absent.jpg"
    out = tmp_path / "out.png"
    out.write_bytes(b"previous result")
    assert run_cli(tiny_checkpoint, image, tmp_path / "a.png", out, *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1
    assert out.read_bytes() == b"previous result"


@pytest.mark.parametrize("kind", ["truncated", "pickled", "other"])
def test_bad_checkpoints_are_one_line(tmp_path, tiny_checkpoint, capsys, kind):
    import torch
    from safetensors.torch import save_file

    write_pair(tmp_path, "a")
    bad = tmp_path / "bad.safetensors"
    if kind == "truncated":
        bad.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    elif kind == "pickled":
        torch.save({"weights": torch.zeros(3)}, bad)
    else:
        save_file({"x": torch.zeros(2)}, str(bad))
    rc = main(
        cli_args(tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "o.png", "--checkpoint", bad)
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("layout", "extra", "message"),
    [
        ("files", ["--soft", "--labels"], "do not go together"),
        ("files", ["--ignore-label", "0"], "needs --labels"),
        ("files", ["--labels", "--ignore-label", "70000"], "--ignore-label must be in 0..65535"),
        ("files", ["--overlay", "pic.xyz"], "picture file"),
        ("files", ["--overlay", "pic.psd"], "picture file that PIL can write"),  # read only
        ("files", ["--overlay", "pic.fits"], "picture file that PIL can write"),
        ("files", ["--overlay", "pic.blp"], "picture file that PIL can write"),  # not in RGB
        ("files", ["--min-step", "0.5"], "min_step must be >= 1"),
        ("files", ["--first-trust", "0"], "first_trust must be > 0"),
        ("files", ["--band", "0"], "band must be"),
        ("files", ["--band", "8", "--every-pixel"], "do not go together"),
        ("files", ["--max-pixels", "0"], "--max-pixels must be at least 1"),
        ("files", ["--max-pixels", "-5"], "--max-pixels must be at least 1"),
        ("dir_file", [], "must be one too"),
        ("file_dir", [], "--image is a file"),
        ("out_file", [], "--out must be one too"),
        ("out_dir", [], "--image is a file, so --out must be one too"),
        ("out_jpg", [], "masks are written as PNG; name a .png file"),
        ("overlay_dir", [], "--image is a file, so --overlay must be one too"),
    ],
)
def test_flags_that_cannot_work_are_one_line(tmp_path, capsys, layout, extra, message):
    write_pair(tmp_path, "a")
    (tmp_path / "dir").mkdir()
    image, coarse, out = tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "o.png"
    if layout == "dir_file":
        image = tmp_path / "dir"
    elif layout == "file_dir":
        coarse = tmp_path / "dir"
    elif layout == "out_file":
        image = coarse = tmp_path / "dir"
        out = tmp_path / "a.png"
    elif layout == "out_dir":
        out = tmp_path / "dir"
    elif layout == "out_jpg":
        out = tmp_path / "o.jpg"
    elif layout == "overlay_dir":
        extra = ["--overlay", tmp_path / "dir"]
    assert main(cli_args(image, coarse, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1


def file_contents(*folders) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in folders for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize(
    ("flag", "target"),
    [
        ("--out", "a.jpg"),
        ("--out", "a.png"),
        ("--out", "photo_link.jpg"),
        ("--overlay", "a.jpg"),
        ("--overlay", "a.png"),
        ("--overlay", "o.png"),  # --out's
    ],
)
def test_outputs_that_would_replace_inputs_or_each_other_are_refused(
    tmp_path, tiny_checkpoint, capsys, monkeypatch, flag, target
):
    """Relative names and symlinks are followed: a.jpg here is tmp_path/a.jpg in --image."""
    write_pair(tmp_path, "a")
    (tmp_path / "photo_link.jpg").symlink_to(tmp_path / "a.jpg")
    before = file_contents(tmp_path)
    monkeypatch.chdir(tmp_path)
    out, overlay = (target, "pic.jpg") if flag == "--out" else ("o.png", target)
    image, coarse = tmp_path / "a.jpg", tmp_path / "a.png"
    assert run_cli(tiny_checkpoint, image, coarse, out, "--overlay", overlay) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} and ") and "are the same file" in err, err
    assert err.count("\n") == 1
    assert file_contents(tmp_path) == before


@pytest.mark.parametrize("failing", ["--out", "--overlay"])
def test_a_pair_whose_output_or_overlay_cannot_be_written_keeps_both(
    tmp_path, tiny_checkpoint, capsys, failing
):
    write_pair(tmp_path, "a")
    out, overlay = tmp_path / "o.png", tmp_path / "o.jpg"
    out.write_bytes(b"previous result")
    overlay.write_bytes(b"previous picture")
    (tmp_path / "file").write_bytes(b"not a folder")
    paths = {"--out": out, "--overlay": overlay}
    paths[failing] = tmp_path / "file" / paths[failing].name  # its folder is a file
    image, coarse = tmp_path / "a.jpg", tmp_path / "a.png"
    outputs = (paths["--out"], "--overlay", paths["--overlay"])
    assert run_cli(tiny_checkpoint, image, coarse, *outputs) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
    assert out.read_bytes() == b"previous result"
    assert overlay.read_bytes() == b"previous picture"
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary left behind


def test_an_unexpected_error_fails_its_pair_not_the_batch(
    tmp_path, tiny_checkpoint, capsys, monkeypatch
):
    """An exception outside PAIR_ERRORS (PIL has raised TypeError on a malformed EXIF block) is
    one line that names its type; KeyboardInterrupt still stops everything."""
    from airm.cli import refine as cli

    read_image, error = cli.read_image, TypeError("bad operand type for abs(): 'str'")

    def read(path, **kwargs):
        if Path(path).stem == "b":
            raise error  # (looked up at each call: the end of the test changes it)
        return read_image(path, **kwargs)

    monkeypatch.setattr(cli, "read_image", read)
    images, masks, out = make_folders(tmp_path, ["a", "b", "c"])
    assert main(cli_args(images, masks, out, "--checkpoint", tiny_checkpoint, *FAST)) == 1
    err = capsys.readouterr().err
    assert "error: b.jpg: TypeError: bad operand type for abs(): 'str'" in err
    assert "2 refined, 0 skipped, 1 failed, 0 unmatched" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]
    single = (images / "b.jpg", masks / "b.png", tmp_path / "b.png")
    assert run_cli(tiny_checkpoint, *single) == 1
    assert capsys.readouterr().err == "error: TypeError: bad operand type for abs(): 'str'\n"
    error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        run_cli(tiny_checkpoint, *single)


def make_folders(tmp_path, names, height=40, width=56):
    images, masks = tmp_path / "im", tmp_path / "seg"
    images.mkdir(exist_ok=True)
    masks.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        image, coarse = disc_pair(height, width, seed=i)
        Image.fromarray(image).save(images / f"{name}.jpg")
        Image.fromarray(coarse).save(masks / f"{name}.png")
    return images, masks, tmp_path / "out"


def test_a_failing_pair_leaves_every_other_file_alone(tmp_path, tiny_checkpoint, capsys):
    images, masks, out = make_folders(tmp_path, ["good", "bad", "kept"])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "bad.png")  # wrong size
    out.mkdir()
    (out / "bad.png").write_bytes(b"earlier output")
    (out / "unrelated.txt").write_bytes(b"mine")
    args = ["--overwrite", "--checkpoint", tiny_checkpoint, *FAST]
    assert main(cli_args(images, masks, out, *args)) == 1
    err = capsys.readouterr().err
    assert "error: bad.jpg:" in err and "same size" in err and "Traceback" not in err
    assert "2 refined, 0 skipped, 1 failed" in err
    assert (out / "bad.png").read_bytes() == b"earlier output"
    assert (out / "unrelated.txt").read_bytes() == b"mine"
    for name in ("good", "kept"):
        assert np.asarray(Image.open(out / f"{name}.png")).shape == (40, 56)


def test_folder_pipeline_reports_each_pair_and_matches_single_pairs(
    tmp_path, tiny_checkpoint, capsys
):
    """Pairs are read and written by threads beside the refinement: each warning and error
    names its own pair whichever stage raised it (reading, refining, writing), and every
    other output is what refining its pair alone gives."""
    names = [f"p{i}" for i in range(7)]
    images, masks, out = make_folders(tmp_path, names)
    Image.fromarray(np.zeros((40, 56), np.uint8)).save(masks / "p2.png")  # empty: a warning
    (images / "p4.jpg").write_bytes(b"not a jpeg")  # fails when read
    out.mkdir()
    (out / "p5.png").mkdir()  # fails when written: a folder is in the way
    args = cli_args(images, masks, out, "--checkpoint", tiny_checkpoint, "--overwrite", *FAST)
    assert main(args) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(("warning", "error"))]
    assert len(lines) == 3, err
    assert "warning: p2.jpg: the coarse mask is empty or full; returning it unchanged" in lines
    assert any(line.startswith("error: p4.jpg: cannot read") for line in lines)
    assert any(line.startswith("error: p5.jpg: ") for line in lines)
    assert "5 refined, 0 skipped, 2 failed, 0 unmatched" in err
    for name in ("p0", "p1", "p2", "p3", "p6"):
        alone = tmp_path / f"{name}_alone.png"
        single = cli_args(images / f"{name}.jpg", masks / f"{name}.png", alone)
        assert main([*single, "--checkpoint", str(tiny_checkpoint), "--quiet", *FAST]) == 0
        assert np.array_equal(
            np.asarray(Image.open(out / f"{name}.png")), np.asarray(Image.open(alone))
        )


def test_temporaries_and_hidden_files_are_no_inputs_or_outputs(tmp_path, tiny_checkpoint, capsys):
    images, masks, out = make_folders(tmp_path, ["a", "b"])
    out.mkdir()
    stale = out / ".a.png.q8w7e6r5.tmp"  # a write killed half-way in an earlier run
    stale.write_bytes(b"\x89PNG half")
    (images / ".b.png.zzzzzzzz.tmp").write_bytes(b"junk")
    (images / "._a.jpg").write_bytes(b"resource fork")  # what macOS leaves on a USB stick
    (masks / ".a.png.aaaaaaaa.tmp").write_bytes(b"junk")
    assert main(cli_args(images, masks, out, "--checkpoint", tiny_checkpoint, *FAST)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert "2 refined, 0 skipped, 0 failed, 0 unmatched" in capsys.readouterr().err


def test_big_layout_in_one_folder(tmp_path, tiny_checkpoint, capsys):
    """name_im.jpg pairs with name_seg.png (not with itself, nor with name_gt.png)."""
    folder = tmp_path / "big"
    folder.mkdir()
    for i, name in enumerate(["p", "q"]):
        image, coarse = disc_pair(40, 56, seed=i)
        Image.fromarray(image).save(folder / f"{name}_im.jpg")
        Image.fromarray(coarse).save(folder / f"{name}_seg.png")
        Image.fromarray(255 - coarse).save(folder / f"{name}_gt.png")
    (folder / "lonely_im.jpg").write_bytes((folder / "p_im.jpg").read_bytes())
    out = tmp_path / "out"
    assert main(cli_args(folder, folder, out, "--checkpoint", tiny_checkpoint, *FAST)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["p.png", "q.png"]
    refined = np.asarray(Image.open(out / "p.png"))
    seg, gt = (np.asarray(Image.open(folder / f"p_{kind}.png")) for kind in ("seg", "gt"))
    assert (refined == seg).mean() > (refined == gt).mean()
    err = capsys.readouterr().err
    assert "warning: lonely_im.jpg: no coarse mask named lonely; skipped" in err
    assert "2 refined, 0 skipped, 0 failed, 1 unmatched" in err


@pytest.mark.parametrize(
    ("flag", "target"),
    [
        ("--out", "im"),
        ("--out", "seg"),
        ("--out", "im_link"),
        ("--overlay", "im"),
        ("--overlay", "seg"),
    ],
)
def test_output_folders_that_are_input_folders_are_refused(
    tmp_path, tiny_checkpoint, capsys, monkeypatch, flag, target
):
    images, masks, _ = make_folders(tmp_path, ["a", "b"])
    (tmp_path / "im_link").symlink_to(images)
    before = file_contents(images, masks)
    monkeypatch.chdir(tmp_path)
    out, overlay = (target, "pics") if flag == "--out" else ("out", target)
    assert run_cli(tiny_checkpoint, images, masks, out, "--overlay", overlay, "--overwrite") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} and ") and "are the same folder" in err, err
    assert err.count("\n") == 1
    assert file_contents(images, masks) == before


def test_out_and_overlay_may_share_a_folder(tmp_path, tiny_checkpoint):
    images, masks, out = make_folders(tmp_path, ["a"])
    args = cli_args(images, masks, out, "--overlay", out, "--checkpoint", tiny_checkpoint, *FAST)
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "a.png"]


def test_one_folder_of_images_and_masks_pairs_by_big_names(tmp_path, tiny_checkpoint, capsys):
    """Sharing a folder, name_im.* and name_seg.* tell images from masks: a plain name.* is
    the other one of a lone name_im.* or name_seg.*, and is passed over beside a full pair."""
    folder, out = tmp_path / "both", tmp_path / "out"
    folder.mkdir()
    for i, (image, coarse) in enumerate(
        [("p_im.jpg", "p_seg.png"), ("q.jpg", "q_seg.png"), ("r_im.jpg", "r.png")]
    ):
        picture, mask = disc_pair(40, 56, seed=i)
        Image.fromarray(picture).save(folder / image)
        Image.fromarray(mask).save(folder / coarse)
    Image.fromarray(255 - disc_pair(40, 56)[1]).save(folder / "p.png")  # unused
    assert main(cli_args(folder, folder, out, "--checkpoint", tiny_checkpoint, *FAST)) == 0
    err = capsys.readouterr().err
    assert "warning: p.png: another image is also named p; skipped" in err
    assert "3 refined, 0 skipped, 0 failed, 1 unmatched" in err
    assert sorted(p.name for p in out.iterdir()) == ["p.png", "q.png", "r.png"]
    for name, image, coarse in (("p", "p_im.jpg", "p_seg.png"), ("r", "r_im.jpg", "r.png")):
        alone = tmp_path / f"{name}_alone.png"
        assert run_cli(tiny_checkpoint, folder / image, folder / coarse, alone) == 0
        assert np.array_equal(
            np.asarray(Image.open(out / f"{name}.png")), np.asarray(Image.open(alone))
        )


def test_one_folder_with_two_plain_files_of_one_name_is_refused(tmp_path, tiny_checkpoint, capsys):
    """im/a.jpg and im/a.png in --image im --coarse im: which is the mask? Not guessed."""
    folder, out = tmp_path / "im", tmp_path / "out"
    folder.mkdir()
    write_pair(folder, "a")  # a.jpg and a.png, side by side
    write_pair(folder, "b")
    assert main(cli_args(folder, folder, out, "--checkpoint", tiny_checkpoint, *FAST)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert "cannot tell a.jpg and a.png apart: name the image a_im.* and the mask a_seg.*" in err
    assert not out.exists()


def test_overlay_of_one_pair(tmp_path, tiny_checkpoint):
    from airm.overlay import COARSE_COLOR, REFINED_COLOR, boundaries

    write_pair(tmp_path, "a", height=64, width=80)
    image, coarse = tmp_path / "a.jpg", tmp_path / "a.png"
    picture, out = tmp_path / "pics" / "a_overlay.png", tmp_path / "o.png"
    assert run_cli(tiny_checkpoint, image, coarse, out, "--overlay", picture) == 0
    pixels = np.asarray(Image.open(picture).convert("RGB"))
    assert pixels.shape == (64, 80, 3)
    refined = boundaries(np.asarray(Image.open(out)))
    only_coarse = boundaries(np.asarray(Image.open(coarse))) & ~refined
    assert refined.any()  # (the tiny model may cover every coarse boundary pixel)
    assert (pixels[refined] == REFINED_COLOR).all()
    assert (pixels[only_coarse] == COARSE_COLOR).all()
    plain = ~(refined | only_coarse)
    assert np.array_equal(pixels[plain], np.asarray(Image.open(image))[plain])


def test_folder_overlays_resume_without_refining_again(tmp_path, tiny_checkpoint, capsys):
    images, masks, out = make_folders(tmp_path, ["a", "b"])
    pictures = tmp_path / "pictures"
    args = cli_args(images, masks, out, "--checkpoint", tiny_checkpoint, *FAST)
    assert main(args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([*args, "--overlay", str(pictures)]) == 0  # outputs exist, pictures do not
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert sorted(p.name for p in pictures.iterdir()) == ["a.jpg", "b.jpg"]
    assert Image.open(pictures / "a.jpg").size == (56, 40)
    capsys.readouterr()
    assert main([*args, "--overlay", str(pictures)]) == 0
    assert "2 outputs exist already" in capsys.readouterr().err


def write_label_pair(folder, name, *, palette=None, seed=0):
    image, labels = label_pair(48, 64, seed=seed)
    Image.fromarray(image).save(folder / f"{name}.jpg")
    picture = Image.fromarray(labels)
    if palette is not None:
        picture.putpalette(palette)
    picture.save(folder / f"{name}.png")
    return labels


def test_labels_of_one_pair_keep_palette_and_ignore(tmp_path, tiny_checkpoint):
    palette = [v for i in range(256) for v in (i, 3 * i % 256, 255 - i)]
    labels = write_label_pair(tmp_path, "a", palette=palette)
    image, coarse = tmp_path / "a.jpg", tmp_path / "a.png"
    out, picture = tmp_path / "labels.png", tmp_path / "overlay.jpg"
    assert run_cli(tiny_checkpoint, image, coarse, out, "--labels", "--overlay", picture) == 0
    result = Image.open(out)
    assert result.mode == "P" and result.getpalette() == palette
    refined = np.asarray(result)
    assert refined.shape == labels.shape and set(np.unique(refined)) <= {0, 1, 2, 255}
    assert (refined[0] == 255).all() and not (refined[1:] == 255).any()
    assert Image.open(picture).size == (64, 48)


def test_labels_ignore_label_flag(tmp_path, tiny_checkpoint):
    labels = write_label_pair(tmp_path, "a")
    image, coarse, out = tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "labels.png"
    assert run_cli(tiny_checkpoint, image, coarse, out, "--labels", "--ignore-label", 2) == 0
    refined = np.asarray(Image.open(out))
    assert np.array_equal(refined == 2, labels == 2)  # 2 is ignored: kept, never spread


def test_labels_folders_and_rgb_label_maps(tmp_path, tiny_checkpoint, capsys):
    images, masks, out = tmp_path / "im", tmp_path / "seg", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    write_label_pair(images, "a")
    (images / "a.png").rename(masks / "a.png")
    write_label_pair(images, "rgb", seed=1)
    rgb = Image.open(images / "rgb.png").convert("RGB")
    (images / "rgb.png").unlink()
    rgb.save(masks / "rgb.png")
    args = cli_args(
        images,
        masks,
        out,
        "--labels",
        "--overlay",
        tmp_path / "pics",
        "--checkpoint",
        tiny_checkpoint,
        *FAST,
    )
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "error: rgb.jpg:" in err and "not a label map" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["a.jpg"]


def test_batch_killed_part_way_resumes_without_redoing_anything(tmp_path, tiny_checkpoint):
    """200 pairs: kill the run (SIGKILL) once some outputs exist, run again; every output is
    a complete PNG, each pair was refined once, and no temporary is left."""
    import os
    import subprocess
    import sys
    import time

    sizes = {f"p{i:03d}": (24 + i % 5 * 4, 32 + i % 3 * 8) for i in range(200)}
    images, masks, out = tmp_path / "im", tmp_path / "seg", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    for i, (name, (height, width)) in enumerate(sizes.items()):
        image, coarse = disc_pair(height, width, seed=i)
        Image.fromarray(image).save(images / f"{name}_im.jpg")
        Image.fromarray(coarse).save(masks / f"{name}_seg.png")
    root = Path(__file__).resolve().parents[1]
    command = [
        sys.executable, str(root / "refine.py"),
        *cli_args(images, masks, out, "--checkpoint", tiny_checkpoint, *FAST),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(command, cwd=root, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.png"))) < 20 and run.poll() is None:
        assert time.monotonic() < deadline, "the first run wrote too few outputs"
        time.sleep(0.02)
    run.kill()
    run.wait()
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert 20 <= len(first) < 200, "the first run was not stopped part-way"
    unfinished = next(name for name in sizes if f"{name}.png" not in first)
    (out / f".{unfinished}.png.k1ll3d00.tmp").write_bytes(b"\x89PNG cut short")  # as if killed
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(first)} outputs exist already" in done.stderr
    assert f"{200 - len(first)} refined, {len(first)} skipped, 0 failed" in done.stderr, (
        done.stderr[-500:]
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.png" for name in sizes)
    for name, (height, width) in sizes.items():
        with Image.open(out / f"{name}.png") as result:
            result.load()  # a truncated PNG fails here
            assert result.size == (width, height) and result.mode == "L"
            assert set(np.unique(np.asarray(result))) <= {0, 255}
    for name, stat in first.items():  # not written again
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stat, name
