"""``python -m leanconv.train`` (deprecated): the same as ``leanconv train`` (``python -m leanconv.cli train``)."""

import sys

from leanconv.cli import main

print("leanconv: `python -m leanconv.train` is deprecated; use `leanconv train` "
      "(under torchrun: `-m leanconv.cli train`)", file=sys.stderr)
sys.exit(main(["train", *sys.argv[1:]]))
