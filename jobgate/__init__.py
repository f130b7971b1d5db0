"""The `jobgate` command: production pieces (api, worker, migrate, keys) and `jobgate dev`."""
