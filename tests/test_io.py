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


def test_more_mask_files_rgb_drawn_soft_and_16bit_0_255(tmp_path):
    truth = np.zeros((6, 6), bool)
    truth[1:4, 2:5] = True
    drawn = np.zeros((6, 6, 4), np.uint8)
    drawn[..., 3] = 255  # opaque: the colour is the mask
    drawn[truth, :3] = 255
    Image.fromarray(drawn, "RGBA").save(tmp_path / "drawn.png")
    Image.fromarray(truth.astype(np.uint16) * 255).save(tmp_path / "deep255.png")
    for name in ("drawn", "deep255"):
        assert np.array_equal(read_mask(tmp_path / f"{name}.png"), truth.astype(np.float32)), name
    soft = np.arange(36, dtype=np.uint8).reshape(6, 6) * 7
    Image.fromarray(soft).save(tmp_path / "soft.png")
    assert np.allclose(read_mask(tmp_path / "soft.png"), soft / 255.0)


def test_image_arrays_normalise_to_the_same_rgb():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, np.uint8)], axis=2)
    for image in (gray, gray[..., None], rgba, rgb.astype(np.uint16) * 257, rgb / 255.0):
        assert np.array_equal(normalize_image(image), rgb), (image.dtype, image.shape)


def png_claiming(path, width: int, height: int) -> None:
    """Write a PNG whose header claims width x height pixels and that holds an 8 x 8 image."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    path.write_bytes(bytes(data))


def test_the_pixel_limit_is_checked_before_decoding(tmp_path):
    """A PNG that claims 12000 x 12000 pixels but holds almost no data: refused for its size
    (a decoder would have found it truncated)."""
    png_claiming(tmp_path / "bomb.png", 12000, 12000)
    with pytest.raises(InputError, match="above the limit"):
        read_mask(tmp_path / "bomb.png")
    with pytest.raises(InputError, match="cannot read"):  # allowed in, it cannot be decoded
        read_mask(tmp_path / "bomb.png", max_pixels=None)


def test_label_files_palette_gray_16bit_and_rgb(tmp_path):
    from airm.io import read_labels, write_labels

    labels = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    palette = [v for i in range(256) for v in (i, 255 - i, 7)]
    write_labels(tmp_path / "pal.png", labels, palette)
    read = read_labels(tmp_path / "pal.png")
    assert np.array_equal(read.labels, labels) and read.palette[:6] == [0, 255, 7, 1, 254, 7]
    write_labels(tmp_path / "short.png", labels, palette[:9])  # colours for 0..2 only
    read = read_labels(tmp_path / "short.png")
    assert np.array_equal(read.labels, labels) and read.palette[:9] == palette[:9]
    Image.fromarray(labels).save(tmp_path / "gray.png")
    assert np.array_equal(read_labels(tmp_path / "gray.png").labels, labels)
    deep = labels.astype(np.uint16) * 200
    write_labels(tmp_path / "deep.png", deep)
    read = read_labels(tmp_path / "deep.png")
    assert read.labels.dtype == np.uint16 and np.array_equal(read.labels, deep)
    assert read.palette is None
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="not a label map"):
        read_labels(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="0..65535"):
        write_labels(tmp_path / "neg.png", np.array([[-1, 0]]))


def test_label_maps_keep_16_bits_and_jpegs_are_refused(tmp_path):
    """A 16-bit map whose labels fit in 8 bits was written back as 8-bit; a JPEG's compression
    invents labels between the true ones."""
    from airm.io import read_labels, write_labels

    small = np.array([[0, 1], [2, 255]], np.uint16)
    write_labels(tmp_path / "deep.png", small)
    assert read_labels(tmp_path / "deep.png").labels.dtype == np.uint16
    Image.fromarray(small.astype(np.uint8)).save(tmp_path / "labels.jpg")
    with pytest.raises(InputError, match="JPEG"):
        read_labels(tmp_path / "labels.jpg")


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    from airm.io import atomic_write

    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def half_write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_write)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_stale_temporaries_are_recognised_and_removed(tmp_path):
    from airm.io import remove_stale_temporaries, temporary_target

    assert temporary_target(".a.png.x1_y2z3q.tmp") == "a.png"
    assert temporary_target("a.png") is None and temporary_target(".tmp") is None
    for name in (".a.png.k3j2h1g0.tmp", ".b.png.abcdefgh.tmp", "a.png", ".a.png.keep"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries([tmp_path / "a.png", tmp_path / "none" / "c.png"])
    assert [p.name for p in removed] == [".a.png.k3j2h1g0.tmp"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".a.png.keep", ".b.png.abcdefgh.tmp", "a.png"]


def test_overlay_draws_both_boundaries():
    from airm.overlay import COARSE_COLOR, REFINED_COLOR, boundaries, draw_overlay

    mask = np.zeros((9, 9), np.uint8)
    mask[3:6, 3:6] = 255
    edge = boundaries(mask)
    inside_ring = np.zeros((9, 9), bool)
    inside_ring[3:6, 3:6] = True
    inside_ring[4, 4] = False
    assert edge[inside_ring].all() and not edge[4, 4] and not edge[0, 0]
    assert np.array_equal(boundaries(mask / 255.0), edge)  # probabilities are thresholded
    labels = np.array([[1, 1, 2, 2]] * 3)
    assert boundaries(labels).tolist() == [[False, True, True, False]] * 3
    image = np.full((9, 9, 3), 100, np.uint8)
    coarse = np.zeros((9, 9), np.uint8)
    coarse[1:8, 1:8] = 255
    picture = draw_overlay(image, mask, coarse, width=2)
    assert (picture[4, 3] == REFINED_COLOR).all() and (picture[1, 4] == COARSE_COLOR).all()
    assert (picture[4, 4] == 100).all() and (image == 100).all()
    with pytest.raises(InputError, match="9x9"):
        draw_overlay(image, mask[:8])


def test_float_masks_a_little_outside_0_1_are_clipped_not_read_as_0_255():
    """A resampled mask overshoots [0, 1] a little; read as 0..255 it became empty."""
    binary = np.zeros((4, 5), bool)
    binary[1:3, 1:4] = True
    expected = binary.astype(np.float32)
    for mask in (
        expected * 1.02,
        expected * 1.000001,
        np.where(binary, 1.0, -0.01),
        expected * 1.5,
    ):
        assert np.array_equal(normalize_mask(mask), expected)
    assert np.allclose(normalize_mask(expected * 200.0), expected * 200 / 255)


def test_integer_masks_and_images_outside_8_and_16_bits_and_empty_arrays_are_refused():
    with pytest.raises(InputError, match="-1..1"):
        normalize_mask(np.array([[-1, 1]], np.int8))
    with pytest.raises(InputError, match="0..70000"):
        normalize_mask(np.array([[0, 70000]], np.int32))
    with pytest.raises(InputError, match="-5..10"):
        normalize_image(np.array([[-5, 10]], np.int32))
    with pytest.raises(InputError, match="empty"):
        normalize_mask(np.zeros((0, 4), np.float32))
    with pytest.raises(InputError, match="empty"):
        normalize_image(np.zeros((0, 4, 3), np.float32))


def test_32_bit_and_float_image_files_are_scaled_not_saturated(tmp_path):
    """Pillow opens these as modes "I" and "F"; the first was clipped to 255, the second
    converted to RGB as black."""
    deep = np.arange(12, dtype=np.int32).reshape(3, 4) * 5000
    Image.fromarray(deep).save(tmp_path / "i.tif")
    assert read_image(tmp_path / "i.tif")[2, 3, 0] == round(55000 / 257)
    assert normalize_image(deep.astype(np.uint16))[2, 3, 0] == round(55000 / 257)
    with pytest.raises(InputError, match="8-bit images hold 0..255"):  # one pixel over: which?
        normalize_image(deep)
    unit = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(unit).save(tmp_path / "f.tif")
    assert np.array_equal(read_image(tmp_path / "f.tif")[..., 0], (unit * 255).round())


def test_a_malformed_exif_block_is_an_input_error(tmp_path):
    """Pillow's orientation handling raised TypeError on a resolution stored as text."""
    import struct

    def entry(tag, kind, count, value):
        return struct.pack("<HHI", tag, kind, count) + value

    entries = [entry(0x0112, 3, 1, struct.pack("<HH", 6, 0)), entry(0x011A, 2, 4, b"abc\0")]
    tiff = b"II*\0" + struct.pack("<IH", 8, len(entries)) + b"".join(entries) + b"\0" * 4
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
        tmp_path / "odd.jpg", exif=b"Exif\0\0" + tiff
    )
    with pytest.raises(InputError, match="cannot read .*odd.jpg"):
        read_image(tmp_path / "odd.jpg")


def test_a_limit_above_pillows_own_is_honoured(tmp_path):
    """Pillow refuses over 179 megapixels as a decompression bomb whatever max_pixels allows; a
    file that claims 200 megapixels and holds none is now let in and found truncated."""
    png_claiming(tmp_path / "big.png", 20000, 10000)
    pillows = Image.MAX_IMAGE_PIXELS
    with pytest.raises(InputError, match="truncated"):
        read_mask(tmp_path / "big.png", max_pixels=300_000_000)
    with pytest.raises(InputError, match="above the limit"):
        read_mask(tmp_path / "big.png")
    assert Image.MAX_IMAGE_PIXELS == pillows  # Pillow's own again, for everyone else


def test_tiffs_above_pillows_limit_are_read_when_max_pixels_allows(tmp_path, monkeypatch):
    """Pillow checks a TIFF's size again when it decodes it (here with its limit made small)."""
    Image.fromarray(np.full((50, 50), 9, np.uint8)).save(tmp_path / "t.tif")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert read_image(tmp_path / "t.tif", max_pixels=None)[0, 0, 0] == 9
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_multi_frame_files_are_closed(tmp_path):
    import gc
    import warnings

    frames = [Image.fromarray(np.full((6, 6), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(tmp_path / "a.gif")
        gc.collect()
    assert image.shape == (6, 6, 3)
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
