"""`python -m mimkit.cli ...` (used by the Makefile and torchrun) runs the `mimkit` command."""

import sys

from mimkit.cli.main import main

sys.exit(main())
