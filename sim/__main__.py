"""`python -m sim`: run the simulated upstream (see `sim.cli`)."""

import sys

from sim.cli import main

sys.exit(main())
