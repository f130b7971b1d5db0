"""jobgate's Python client: submit jobs and batches, wait for them, read their results.

```python
from jobgate.client import Client

with Client("http://127.0.0.1:8000", "jg_...") as client:
    batch = client.submit_batch("requests.jsonl", model="fast")
    client.wait_batch(batch["id"], on_progress=lambda p: print(p.done, "/", p.total))
    for line in client.iter_results(batch["id"]):
        print(line["custom_id"], line["status"])
```

`AsyncClient` has the same methods, awaited. Errors are `jobgate.client.errors.JobgateError`
subclasses; `verify_webhook` checks a delivery's signature on the receiving side.
"""

from jobgate.client._async import AsyncClient
from jobgate.client._retry import RetryPolicy
from jobgate.client._sync import Client
from jobgate.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    JobgateError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    WaitTimeout,
    WebhookVerificationError,
)
from jobgate.client.progress import BatchProgress
from jobgate.client.types import Batch, BatchCounts, Job, ResultLine
from jobgate.client.webhooks import verify_webhook

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BatchCounts",
    "BatchProgress",
    "Client",
    "ConflictError",
    "InternalServerError",
    "Job",
    "JobgateError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResultLine",
    "RetryPolicy",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]
