"""The HTTP API (FastAPI): routes, request schemas, auth, and the error → HTTP mapping."""
