import sys

from core.errors import ConfigError
from core.metrics_dir import deployment_metrics_dir, open_metrics_dir
from core.settings import Settings

# Before workers.process imports prometheus-client (through core.metrics): the folder of the
# parent `jobgate worker` when it has one, else this deployment's own (core/metrics_dir.py).
settings = Settings()
try:
    metrics_dir = open_metrics_dir(
        settings.metrics_dir,
        deployment_metrics_dir(settings.database_url, settings.redis_prefix),
        default_is_private=True,
    )
except ConfigError as exc:
    sys.exit(f"jobgate worker: {exc}")

from workers.process import main  # noqa: E402

try:
    code = main()
finally:
    metrics_dir.close()
sys.exit(code)
