"""jobgate's core: settings, domain types, SQL store, routing config, providers and the broker.

Nothing here imports `api`, `workers` or `jobgate`; both process kinds build on this package.
"""
