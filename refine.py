"""Refine coarse masks with AIRM. Run `python refine.py --help`."""

import sys

from airm.cli import main

if __name__ == "__main__":
    sys.exit(main())
