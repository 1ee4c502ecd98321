"""The package and its commands: airm stands without eval; `airm`, `python -m airm`,
refine.py and train.py run end to end."""

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import airm
from airm.cli import build_parser
from airm.cli import main as airm_main
from airm.cli import refine as refine_cli
from airm.cli import train as train_cli

from conftest import disc_pair

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_no_module_of_airm_imports_eval():
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "airm").rglob("*.py"))
        for name in _imported_modules(path)
        if name.split(".")[0] == "eval"
    ]
    assert not offenders


def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")
    }


def test_eval_holds_no_copy_of_the_metrics_or_the_scoring():
    library = _top_level_names(ROOT / "airm" / "metrics.py")
    library |= _top_level_names(ROOT / "airm" / "scoring.py")
    assert {"iou", "boundary_accuracy", "ScoreAccumulator", "score_pairs"} <= library
    for path in sorted((ROOT / "eval").rglob("*.py")):
        assert not _top_level_names(path) & library, path


# Run in a fresh interpreter from an empty folder: the repository root is taken off sys.path
# (so eval/ cannot be found there), airm is found through a link to it, and any import of a
# module named eval fails loudly.
STANDALONE = """
import importlib.abc, sys
from pathlib import Path

root, shelf = Path(sys.argv[1]), sys.argv[2]


class NoEval(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "eval":
            raise ModuleNotFoundError(f"something imported {name}")
        return None


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
sys.path.insert(0, shelf)
sys.meta_path.insert(0, NoEval())
import airm, airm.cli, airm.metrics, airm.perturb, airm.scoring, airm.training

assert Path(airm.__file__).resolve().parent == root / "airm", airm.__file__
print(sorted(m for m in sys.modules if m.split(".")[0] == "eval"))
"""


def test_airm_imports_without_eval(tmp_path):
    shelf = tmp_path / "site"
    shelf.mkdir()
    (shelf / "airm").symlink_to(ROOT / "airm", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(ROOT), str(shelf)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _env() -> dict[str, str]:
    """The environment of a command run from elsewhere that must import this checkout's airm."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _pair(folder: Path) -> list[str]:
    image, coarse = disc_pair(48, 64)
    Image.fromarray(image).save(folder / "a.jpg")
    Image.fromarray(coarse).save(folder / "a.png")
    return ["--image", str(folder / "a.jpg"), "--coarse", str(folder / "a.png")]


def _console_script() -> Path:
    script = Path(sys.executable).parent / ("airm.exe" if os.name == "nt" else "airm")
    if not script.exists():
        pytest.skip(f"the airm console script is not installed next to {sys.executable}")
    return script


COMMANDS = {
    "airm": lambda: [str(_console_script()), "refine"],
    "python -m airm": lambda: [sys.executable, "-m", "airm", "refine"],
    "refine.py": lambda: [sys.executable, str(ROOT / "refine.py")],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_refine_end_to_end(command, tmp_path, tiny_checkpoint):
    """Each way to refine, run from a temporary folder: one line on stdout, the mask written."""
    prefix = COMMANDS[command]()
    out = tmp_path / "out" / "a.png"
    flags = [*_pair(tmp_path), "--out", str(out), "--checkpoint", str(tiny_checkpoint)]
    done = subprocess.run(
        [*prefix, *flags, "--scales", "1"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip()
    assert "\n" not in line and line.startswith(f"{out}: 64x48 in "), done.stdout
    mask = np.asarray(Image.open(out))
    assert mask.shape == (48, 64) and set(np.unique(mask)) == {0, 255}


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        airm_main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"airm {airm.__version__}"


def test_python_m_airm_exits_with_the_status_of_the_command(tmp_path):
    run = [sys.executable, "-m", "airm"]
    done = subprocess.run([*run, "segment"], cwd=tmp_path, env=_env(), capture_output=True)
    assert done.returncode == 2 and b"invalid choice: 'segment'" in done.stderr


def test_a_missing_or_wrong_command_exits_2(tmp_path, capsys):
    for argv in ([], ["refine"], ["train", "--out", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit:
            airm_main(argv)
        assert exit.value.code == 2, argv
        assert "usage: airm" in capsys.readouterr().err
    pair = _pair(tmp_path)
    assert airm_main(["refine", *pair, "--out", str(tmp_path / "o.png"), "--soft", "--labels"]) == 2
    assert "do not go together" in capsys.readouterr().err


def _options(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    """Every flag of a parser, with what it takes (without -h)."""
    return {
        flag: (action.dest, action.nargs, action.type, action.default, action.required)
        for action in parser._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    }


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


@pytest.mark.parametrize("name,module", [("refine", refine_cli), ("train", train_cli)])
def test_subcommands_take_the_flags_of_their_scripts(name, module):
    script = _options(module.build_parser())
    assert len(script) >= 10 and "--out" in script
    assert _options(_subcommand(name)) == script


@pytest.mark.parametrize("script", ["refine.py", "train.py"])
def test_scripts_help(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, capture_output=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.decode().startswith(f"usage: {script}")


def _training_folder(root: Path) -> Path:
    root.mkdir()
    for i in range(2):
        image, _ = disc_pair(72, 96, seed=i)
        truth = image[..., 0] > 120
        Image.fromarray(image).save(root / f"s{i}_im.jpg")
        Image.fromarray(truth.astype(np.uint8) * 255).save(root / f"s{i}_gt.png")
    return root


TINY_RUN = ["--batch-size", "1", "--crop-size", "64", "--query-size", "32", "--workers", "0"]


def test_train_py_tiny_run(tmp_path):
    data, out = _training_folder(tmp_path / "data"), tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--out", str(out)]
    done = subprocess.run(
        [*command, "--iterations", "1", *TINY_RUN],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"final weights: {out / 'final.safetensors'}"
    model = airm.load_model(out / "final.safetensors")
    assert model.config == airm.VARIANTS["airm_efficientnet_lite0"]()


def test_airm_train_writes_the_weights_of_the_variant_asked(tmp_path, capsys):
    data, out = _training_folder(tmp_path / "data"), tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), "--variant", "airm_mit_b0"]
    assert airm_main([*argv, "--iterations", "0", *TINY_RUN]) == 0
    assert f"final weights: {out / 'final.safetensors'}" in capsys.readouterr().out
    assert airm.load_model(out / "final.safetensors").config == airm.VARIANTS["airm_mit_b0"]()


def test_train_time_limit_stops_a_job_that_resume_continues(tmp_path, capsys):
    data, out = _training_folder(tmp_path / "data"), tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), *TINY_RUN, "--iterations", "2"]
    assert airm_main([*argv, "--log-interval", "1", "--time-limit", "0"]) == 0
    assert f"stopped at the time limit: {out / 'last.pt'}" in capsys.readouterr().out
    assert not (out / "final.safetensors").exists()
    assert airm_main([*argv, "--log-interval", "1", "--time-limit", "5", "--resume"]) == 0
    assert f"final weights: {out / 'final.safetensors'}" in capsys.readouterr().out
    assert airm_main([*argv, "--out", str(tmp_path / "bad"), "--time-limit", "-1"]) == 2
    assert "--time-limit takes minutes >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_airm_export_writes_the_weights_of_a_job_stopped_early(tmp_path, capsys):
    data, out = _training_folder(tmp_path / "data"), tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), *TINY_RUN, "--iterations", "2"]
    assert airm_main([*argv, "--log-interval", "1", "--time-limit", "0"]) == 0
    assert f"`airm export {out / 'last.pt'} WEIGHTS.safetensors`" in capsys.readouterr().out
    weights = tmp_path / "w.safetensors"
    assert airm_main(["export", str(out / "last.pt"), str(weights)]) == 0
    assert capsys.readouterr().out.strip() == f"weights of step 1: {weights}"
    assert airm.load_model(weights).config == airm.VARIANTS["airm_efficientnet_lite0"]()
    assert airm_main(["export", str(out / "last.pt"), str(weights), "--trained"]) == 0
    capsys.readouterr()
    assert airm_main(["export", str(weights), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "an inference checkpoint already" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.safetensors").exists()


def test_train_model_flags_change_the_model_config(tmp_path, capsys):
    data, out = _training_folder(tmp_path / "data"), tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), *TINY_RUN, "--iterations", "1"]
    flags = ["--model", "hyper_input_norm=true", "--model", "hidden_dims=[16,16]"]
    assert airm_main([*argv, "--batch-size", "2", *flags]) == 0
    config = airm.load_model(out / "final.safetensors").config
    assert config.hyper_input_norm and config.hidden_dims == (16, 16)
    assert config.rank == airm.VARIANTS["airm_efficientnet_lite0"]().rank
    for bad, message in [
        ("nope=1", "FIELD=VALUE with FIELD one of"),
        ("rank", "FIELD=VALUE"),
        ("rank=eight", "not JSON"),
        ("rank=0", "builds no model: rank must be >= 1"),
        ('encoder="nosuch"', "builds no model: Unknown model (nosuch)"),
        ("hyper_input_norm=true", "batch_size must be >= 2"),
    ]:
        assert airm_main([*argv, "--out", str(tmp_path / "bad"), "--model", bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_train_schedule_and_data_flags_are_checked_before_training(tmp_path, capsys):
    data = _training_folder(tmp_path / "data")
    argv = ["train", *TINY_RUN, "--iterations", "1", "--out", str(tmp_path / "bad")]
    for flags, message in [
        (["--data", str(data), "--lr-milestones", "2", "2"], "lr_milestones are fractions"),
        (["--data", str(data), "--ema-decay", "1.5"], "ema_decay must lie between 0 and 1"),
        (["--data", str(tmp_path / "none")], "data folder not found"),
        (["--data", str(data), "--val", str(tmp_path)], "no image/mask pairs"),
    ]:
        assert airm_main([*argv, *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, flags
    assert not (tmp_path / "bad").exists()


def test_train_lr_scale_flags_are_checked_before_training(tmp_path, capsys):
    data = _training_folder(tmp_path / "data")
    argv = ["train", "--data", str(data), *TINY_RUN, "--iterations", "1"]
    for bad in ("skip_gate", "skip_gate=0", "=2", "skip_gate=fast"):
        assert airm_main([*argv, "--out", str(tmp_path / "bad"), "--lr-scale", bad]) == 2
        assert "--lr-scale takes PREFIX=FACTOR" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    ok = ["--out", str(tmp_path / "run"), "--model", "skip_gate=true", "--lr-scale", "skip_gate=5"]
    assert airm_main([*argv, *ok, "--train-only", "skip_gate"]) == 0
    assert airm.load_model(tmp_path / "run" / "final.safetensors").config.skip_gate
    config = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert config["train"]["train_only"] == ["skip_gate"]


def test_train_loss_flags_reach_the_run_and_are_checked_before_training(tmp_path, capsys):
    data = _training_folder(tmp_path / "data")
    argv = ["train", "--data", str(data), *TINY_RUN, "--iterations", "1"]
    for bad, message in [
        ("nope=1", "FIELD=VALUE with FIELD one of"),
        ("affinity=-1", "loss weight affinity must be a number >= 0"),
        ("boundary=true", "loss weight boundary must be a number >= 0"),
        ("band_radius=2.5", "loss band_radius must be an integer >= 1"),
    ]:
        assert airm_main([*argv, "--out", str(tmp_path / "bad"), "--loss", bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    flags = ["--loss", "affinity=0", "--loss", "boundary=4"]
    assert airm_main([*argv, "--out", str(tmp_path / "run"), *flags]) == 0
    config = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert config["train"]["loss"]["affinity"] == 0 and config["train"]["loss"]["boundary"] == 4
    assert config["train"]["loss"]["bce"] == 1.0  # the others keep their defaults


def test_train_compile_flags_name_a_backend_and_mode_checked_before_training(tmp_path, capsys):
    data = _training_folder(tmp_path / "data")
    argv = ["train", "--data", str(data), *TINY_RUN, "--iterations", "1"]
    assert airm_main([*argv, "--out", str(tmp_path / "bad"), "--compile", "nope"]) == 2
    assert "unknown torch.compile backend 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert train_cli.parse_args(argv[1:] + ["--out", "x", "--compile"]).compile == "inductor"
    assert train_cli.parse_args(argv[1:] + ["--out", "x"]).compile is None
    bad_mode = ["--compile", "--compile-mode", "fastest"]
    assert airm_main([*argv, "--out", str(tmp_path / "bad"), *bad_mode]) == 2
    assert "compile mode 'fastest' with backend 'inductor'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    mode = train_cli.parse_args(
        argv[1:] + ["--out", "x", "--compile", "--compile-mode", "reduce-overhead"]
    )
    assert (mode.compile, mode.compile_mode) == ("inductor", "reduce-overhead")


def test_train_schedule_flags_reach_the_run(tmp_path):
    data = _training_folder(tmp_path / "data")
    argv = ["train", "--data", str(data), *TINY_RUN, "--iterations", "2", "--log-interval", "1"]
    flags = ["--ema-decay", "0.9", "--lr", "0.01", "--lr-milestones", "1", "1"]
    assert airm_main([*argv, "--out", str(tmp_path / "run"), *flags]) == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[0]["train"]["ema_decay"] == 0.9
    assert records[0]["train"]["lr_milestones"] == [1.0, 1.0]
    assert [x["lr"] for x in records if x["event"] == "train"] == [0.01, 0.01]  # constant
    assert airm_main([*argv, "--out", str(tmp_path / "bad"), "--lr-milestones", "0.5", "2"]) == 2
    assert not (tmp_path / "bad").exists()


def test_train_refuses_unusable_pairs_before_training_and_skips_hidden_files(tmp_path, capsys):
    """A bad pair used to end the run with a traceback at the step that read it, and every
    --resume at that step again."""
    data = _training_folder(tmp_path / "data")
    (data / "._s0_im.jpg").write_bytes(b"\0\5\26\7 a macOS resource fork")  # ignored
    (data / "._s0_gt.png").write_bytes(b"\0\5\26\7")
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), *TINY_RUN, "--iterations", "1"]
    assert airm_main(argv) == 0
    capsys.readouterr()
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(data / "s1_gt.png")
    (data / "s2_im.jpg").write_bytes(b"not a picture")
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(data / "s2_gt.png")
    bad = tmp_path / "bad"
    assert airm_main([*argv[:3], "--out", str(bad), *argv[5:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 of the 3 training pairs are unusable: ") and "s2_im.jpg" in err
    assert "s1_gt.png is (60, 80), s1_im.jpg (72, 96)" in err and len(err.splitlines()) == 1
    assert not bad.exists()


def test_train_resume_accepts_what_may_change(tmp_path, capsys):
    """A moved data folder, more iterations, other intervals, an --init file gone, a last.pt
    from before a field existed, flags in another order, a log of a run that failed before its
    first checkpoint: none stops a run or its --resume."""
    import shutil

    import torch

    data, out = _training_folder(tmp_path / "data"), tmp_path / "run"
    init = tmp_path / "init.safetensors"
    airm.save_model(airm.build_model("airm_efficientnet_lite0", rank=4, hyper_dim=8), init)
    (out).mkdir()
    (out / "log.jsonl").write_text('{"event": "config"}\n')  # a run that failed at once
    flags = ["--model", "rank=4", "--model", "hyper_dim=8", "--init", str(init)]
    argv = ["train", "--data", str(data), "--out", str(out), *TINY_RUN, "--log-interval", "1"]
    assert airm_main([*argv, *flags, "--iterations", "2", "--time-limit", "0"]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    train = json.loads(state["train_config"])
    del train["soft_masks"], train["loss"]["affinity"]  # as a run before they existed
    state["train_config"] = json.dumps(train)
    torch.save(state, out / "last.pt")
    init.unlink()
    moved = shutil.move(data, tmp_path / "elsewhere")
    flags = ["--model", "hyper_dim=8", "--model", "rank=4", "--init", str(init)]
    argv[2] = str(moved)
    assert airm_main([*argv, *flags, "--iterations", "3", "--val-interval", "7", "--resume"]) == 0
    assert f"final weights: {out / 'final.safetensors'}" in capsys.readouterr().out
    (out / "last.pt").unlink()  # an ended run whose last.pt was cleared away
    assert airm_main([*argv, *flags[:4], "--iterations", "3", "--resume"]) == 2
    assert "holds a run already (final.safetensors): it has ended" in capsys.readouterr().err


def test_train_resume_continues_only_its_own_run(tmp_path, capsys):
    data, out = _training_folder(tmp_path / "data"), tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), *TINY_RUN, "--iterations", "2"]
    assert airm_main([*argv, "--time-limit", "0", "--log-interval", "1"]) == 0
    state = (out / "last.pt").read_bytes()
    log = (out / "log.jsonl").read_text()
    capsys.readouterr()
    for flags, message in [
        ([], "holds a run already (last.pt): --resume continues it"),
        (["--resume", "--batch-size", "2"], "its own settings: batch_size 1 -> 2"),
        (["--resume", "--lr", "0.1", "--seed", "5"], "lr 0.000225 -> 0.1, seed 0 -> 5"),
        (["--resume", "--iterations", "0"], "is at step 1, past iterations 0"),
        (["--resume", "--variant", "airm_mit_b0"], "another model config"),
    ]:
        assert airm_main([*argv, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert (out / "last.pt").read_bytes() == state and (out / "log.jsonl").read_text() == log
    (out / "last.pt").write_bytes(state[: len(state) // 2])  # a piece missing from a copy
    assert airm_main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "is not a readable training state (last.pt)" in err and len(err.splitlines()) == 1
    assert airm_main(["export", str(out / "log.jsonl"), str(tmp_path / "w.safetensors")]) == 2
    assert "is not a readable training state" in capsys.readouterr().err
    (out / "last.pt").write_bytes(state)
    stale = out / ".last.pt.k3j4h5g6.tmp"  # what a job killed while checkpointing leaves
    stale.write_bytes(state[:100])
    assert airm_main([*argv, "--resume"]) == 0
    assert (out / "final.safetensors").is_file() and not stale.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--log-interval", "0"], "log_interval must be >= 1"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--query-size", "100"], "query_size 100 exceeds crop_size 64"),
        (["--val-limit", "0"], "val_limit must be >= 1"),
        (["--lr", "nan"], "lr must be a number > 0"),
        (["--far-fraction", "2"], "far_fraction must be in [0, 1]"),
        (["--init", "missing.safetensors"], "init not found"),
        (["--train-only", "nope"], "prefix 'nope' names no parameter"),
        (["--val", "DATA"], "holds no <name>_seg.png coarse masks"),
    ],
)
def test_train_flags_checked_before_the_output_folder_is_made(tmp_path, capsys, flags, message):
    data = _training_folder(tmp_path / "data")
    flags = [str(data) if f == "DATA" else f for f in flags]
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "bad"), *TINY_RUN, *flags]
    assert airm_main([*argv, "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "bad").exists()


def test_written_weights_have_ordinary_permissions(tmp_path):
    """safetensors' save_file makes its file anew, which undid atomic_write's permissions."""
    import os

    data, out = _training_folder(tmp_path / "data"), tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), *TINY_RUN]
    umask = os.umask(0o022)  # (under 077 the file would be 0600 either way)
    try:
        assert airm_main([*argv, "--iterations", "1"]) == 0
    finally:
        os.umask(umask)
    assert (out / "final.safetensors").stat().st_mode & 0o777 == 0o644
