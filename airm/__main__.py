"""`python -m airm ...`: the `airm` command (see `airm.cli`)."""

import sys

from airm.cli import main

if __name__ == "__main__":
    sys.exit(main())
