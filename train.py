"""Train an AIRM refiner (SPEC section 3); the same as `airm train`. Run `python train.py --help`.

One process: `python train.py --data DIR ... --out runs/x`.
Several (DDP): `torchrun --nproc_per_node N train.py ...` (NCCL on GPUs, gloo on CPU).
"""

import sys

from airm.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
