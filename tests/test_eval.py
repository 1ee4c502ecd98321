import json

import numpy as np
from PIL import Image

from eval.run import main

from conftest import disc_pair


def test_eval_scores_coarse_and_a_model(tmp_path, tiny_checkpoint, capsys):
    data = tmp_path / "val"
    data.mkdir()
    for i in range(2):
        image, coarse = disc_pair(60, 80, seed=i)
        truth = image[..., 0] > 120
        Image.fromarray(image).save(data / f"d-{i}_im.jpg")
        Image.fromarray(truth.astype(np.uint8) * 255).save(data / f"d-{i}_gt.png")
        Image.fromarray(coarse).save(data / f"d-{i}_seg.png")
    out = tmp_path / "r.json"
    assert (
        main(["--data", str(data), "--method", f"tiny={tiny_checkpoint}", "--json", str(out)]) == 0
    )
    results = json.loads(out.read_text())
    assert [r["method"] for r in results] == ["coarse", "tiny"]
    coarse = results[0]
    # The coarse row is the protocol applied to the _seg masks themselves.
    inter = union = 0
    for i in range(2):
        gt = np.asarray(Image.open(data / f"d-{i}_gt.png")) > 127
        seg = np.asarray(Image.open(data / f"d-{i}_seg.png")) > 127
        inter, union = inter + (gt & seg).sum(), union + (gt | seg).sum()
    assert abs(coarse["iou"] - 100 * inter / union) < 1e-9
    assert results[1]["peak_mb"] > 0 and "tiny" in capsys.readouterr().out


def test_eval_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert main(["--data", str(tmp_path), "--method", "x=nope.safetensors"]) == 2
