"""Refine coarse masks with AIRM; the same as `airm refine`. Run `python refine.py --help`."""

import sys

from airm.cli.refine import main

if __name__ == "__main__":
    sys.exit(main())
