"""``python -m leanconv.cli``: the ``leanconv`` command."""

import sys

from leanconv.cli import main

sys.exit(main())
