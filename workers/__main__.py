import sys

from core.metrics_dir import use_metrics_dir
from core.settings import Settings

# Before workers.process imports prometheus-client (through core.metrics).
use_metrics_dir(Settings().metrics_dir)

from workers.process import main  # noqa: E402

sys.exit(main())
