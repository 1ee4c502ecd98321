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
    plain, verbatim = argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter
    for name, module, summary, formatter in (
        ("refine", refine, "refine a mask, or folders of them (what refine.py does)", plain),
        ("train", train, "train a model (what train.py does)", verbatim),  # its layout kept
        ("export", export, "write the weights of an unfinished training run (its last.pt)", plain),
    ):
        sub = commands.add_parser(
            name,
            help=summary,
            description=module.DESCRIPTION,
            formatter_class=formatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
