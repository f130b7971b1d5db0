import sys

from jobgate.cli import main

sys.exit(main())
