"""The `airm` command (also `python -m airm`): `airm refine ...`, `airm train ...`,
`airm export ...`.

`refine` and `train` take the flags of their scripts (`refine.py`, `train.py`), parsed by the
same code (`airm.cli.refine`, `airm.cli.train`), and exit as they do: 0 when all went well, 1
when an input failed, 2 when the command itself is wrong (for `export`, its training state).
"""

from __future__ import annotations

import argparse

from airm import __version__
from airm.cli import export, refine, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="airm",
        description="Refine coarse object masks into accurate full-resolution masks (AIRM, "
        "ECCV 2024). `airm COMMAND --help` lists a command's flags.",
    )
    p.add_argument("--version", action="version", version=f"airm {__version__}")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    refine_parser = commands.add_parser(
        "refine",
        help="refine a mask, or folders of them (what refine.py does)",
        description=refine.DESCRIPTION,
    )
    refine.add_arguments(refine_parser)
    refine_parser.set_defaults(run=refine.run)
    train_parser = commands.add_parser(
        "train",
        help="train a model (what train.py does)",
        description=train.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_arguments(train_parser)
    train_parser.set_defaults(run=train.run)
    export_parser = commands.add_parser(
        "export",
        help="write the weights of an unfinished training run (its last.pt)",
        description=export.DESCRIPTION,
    )
    export.add_arguments(export_parser)
    export_parser.set_defaults(run=export.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
