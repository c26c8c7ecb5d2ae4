"""`python -m moescale ...`, the form torchrun launches: `torchrun --nproc-per-node N -m moescale
train CONFIG` (docs/distributed.md)."""

from moescale.cli import main

raise SystemExit(main())
