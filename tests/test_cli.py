import numpy as np
from PIL import Image

from airm.cli import main

from conftest import disc_pair

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
