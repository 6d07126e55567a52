"""`python -m lab2prod`, the same as the `lab2prod` command (for environments where it is not on PATH)."""

import sys

from lab2prod.run.cli import main

sys.exit(main())
