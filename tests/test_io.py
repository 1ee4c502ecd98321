import numpy as np
import pytest
from PIL import Image

from airm.io import InputError, normalize_image, normalize_mask, read_image, read_mask


def test_mask_encodings_normalise_to_the_same_probabilities():
    binary = np.zeros((4, 5), bool)
    binary[1:3, 1:4] = True
    expected = binary.astype(np.float32)
    for mask in (
        binary,
        binary.astype(np.uint8),
        binary.astype(np.uint8) * 255,
        binary.astype(np.uint16) * 65535,
        expected.astype(np.float64),
    ):
        assert np.array_equal(normalize_mask(mask), expected), mask.dtype
    soft = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    assert np.allclose(normalize_mask(soft), soft)


def test_bad_arrays_are_refused():
    with pytest.raises(InputError, match="NaN"):
        normalize_mask(np.full((3, 3), np.nan))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        normalize_mask(np.full((3, 3), -2.0))
    with pytest.raises(InputError, match="HxW"):
        normalize_image(np.zeros((3, 3, 5), np.uint8))


def test_images_gray_rgba_16bit(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (3, 4, 3)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 200
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 0]
    deep = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out[2, 3, 0] == round(55000 / 257)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (20, 10, 3)


def test_mask_files_rgb_palette_alpha_16bit(tmp_path):
    truth = np.zeros((6, 6), bool)
    truth[2:5, 1:4] = True
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[truth] = (255, 0, 0)  # a red-on-black mask
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    pal = Image.fromarray(truth.astype(np.uint8) * 3, "L").convert("P")
    pal.save(tmp_path / "pal.png")
    alpha = np.zeros((6, 6, 4), np.uint8)
    alpha[..., 3] = truth * 255
    Image.fromarray(alpha, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(truth.astype(np.uint16) * 65535).save(tmp_path / "deep.png")
    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "zero_one.png")
    for name in ("rgb", "pal", "alpha", "deep", "zero_one"):
        assert np.array_equal(read_mask(tmp_path / f"{name}.png") > 0.5, truth), name


def test_unreadable_truncated_and_huge_files(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read"):
        read_image(tmp_path / "junk.png")
    Image.fromarray(np.zeros((200, 200, 3), np.uint8) + 100).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot read"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(InputError, match="above the limit"):
        read_image(tmp_path / "full.jpg", max_pixels=1000)
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.jpg")


def test_written_masks_have_ordinary_permissions(tmp_path):
    import os

    from airm.io import write_mask

    write_mask(tmp_path / "m.png", np.zeros((4, 4), np.uint8))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.png").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
