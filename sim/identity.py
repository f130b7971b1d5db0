"""Microsoft Entra ID's managed identity endpoint, as Azure App Service serves it to its apps.

azure-identity's `DefaultAzureCredential` finds it through the environment
(`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`) and asks `GET <endpoint>?api-version=2019-08-01&
resource=<audience>` with the header `X-IDENTITY-HEADER: <secret>`; the answer is a bearer
token with its expiry in seconds since the epoch. Here the endpoint is `GET
/sim/identity/token`: it hands out `sim-entra-<n>` tokens, valid for an hour, and
`GET /sim/identity` tells what was issued (how many, for which audiences), so a test can see
that a call's bearer token came from the real credential chain and was cached by it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

TOKEN_LIFETIME_S = 3600


class IdentityEndpoint:
    def __init__(self) -> None:
        self.resources: list[str] = []

    def issue(self, query: Mapping[str, str], headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """The token answer, or App Service's 400 for a request without the secret header or
        an audience."""
        resource = query.get("resource", "")
        if not headers.get("x-identity-header") or not resource:
            return 400, {"error": "invalid_request", "error_description": "X-IDENTITY-HEADER and resource"}
        self.resources.append(resource)
        return 200, {
            "access_token": f"sim-entra-{len(self.resources)}",
            "expires_on": str(int(time.time()) + TOKEN_LIFETIME_S),
            "resource": resource,
            "token_type": "Bearer",
        }

    def issued(self) -> dict[str, Any]:
        return {"tokens": len(self.resources), "resources": list(self.resources)}

    def reset(self) -> None:
        self.resources.clear()
