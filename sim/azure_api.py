"""The Azure OpenAI dialect: one deployment's chat completions, shaped as Azure answers them.

Azure puts the deployment in the URL, `POST /openai/deployments/{deployment}/chat/completions
?api-version=…`, and the body's `model` is ignored: the deployment decides the model. Here the
deployment's name stands for its model (knobs, limits, stats and the answer's `model` are keyed
by it). A request without `api-version` is a 404 ("Resource not found"), as Azure answers. The
key comes in an `api-key` header, or, for Microsoft Entra ID, as `Authorization: Bearer <token>`.

Everything else is OpenAI's wire format (`sim.openai_api`) plus Azure's content filter: answers
carry `prompt_filter_results` and each choice `content_filter_results`; a last user message
starting `filter_prompt:` is refused with Azure's 400 (`code: content_filter`, `innererror`
`ResponsibleAIPolicyViolation`) and one starting `filter_answer:` is answered 200 with
`finish_reason: content_filter` (not streamed answers: they finish as usual). Errors Azure words
its own way (401, 404, 429) use its body, `{"error": {"code": "429", "message": …}}`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from sim.answer import Answer
from sim.knobs import DEFAULT_ORGANIZATION
from sim.openai_api import OpenAIDialect
from sim.wire import ChatRequest, SimError

DEPLOYMENT_PATH = re.compile(r"/openai/deployments/([^/]+)/chat/completions")
FILTER_PROMPT = "filter_prompt:"
FILTER_ANSWER = "filter_answer:"

_SAFE = {"filtered": False, "severity": "safe"}
_CATEGORIES = ("hate", "self_harm", "sexual", "violence")
_PROMPT_FILTERED = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management policy."
    " Please modify your prompt and retry."
)
_MESSAGES = {
    401: (
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a"
        " valid key for an active subscription and use a correct regional API endpoint for your resource."
    ),
    404: "Resource not found",
}


def azure_dialect(path: str, query_string: bytes) -> AzureDialect | None:
    """The dialect for a request to `path`, bound to its deployment, or None when it is not
    a deployment's chat completions path."""
    match = DEPLOYMENT_PATH.fullmatch(path)
    if match is None:
        return None
    versions = parse_qs(query_string.decode("latin-1")).get("api-version")
    return AzureDialect(match.group(1), versions[-1] if versions else None)


def _filter_results(violence_filtered: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {category: dict(_SAFE) for category in _CATEGORIES}
    if violence_filtered:
        results["violence"] = {"filtered": True, "severity": "medium"}
    return results


class AzureDialect(OpenAIDialect):
    """One request's deployment and API version, and Azure's differences from OpenAI."""

    def __init__(self, deployment: str, api_version: str | None) -> None:
        self.deployment = deployment
        self.api_version = api_version

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        key = headers.get("api-key", "").strip()
        return key or super().api_key(headers)

    def parse(self, body: Any) -> ChatRequest:
        if not self.api_version:
            raise SimError(404)
        request = super().parse({**body, "model": self.deployment} if isinstance(body, dict) else body)
        if request.user_text.startswith(FILTER_PROMPT):
            raise SimError(400, _PROMPT_FILTERED, "prompt", code="content_filter")
        return request

    def success_body(self, request: ChatRequest, answer: Answer, request_id: str) -> dict[str, Any]:
        body = super().success_body(request, answer, request_id)
        filtered = request.user_text.startswith(FILTER_ANSWER)
        for choice in body["choices"]:
            choice["content_filter_results"] = _filter_results(violence_filtered=filtered)
            if filtered:
                choice["finish_reason"] = "content_filter"
                choice["message"]["content"] = None
        body["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _filter_results()}]
        return body

    def error_body(
        self,
        error: SimError,
        request: ChatRequest | None,
        request_id: str,
        *,
        organization: str = DEFAULT_ORGANIZATION,
    ) -> dict[str, Any]:
        if error.code == "content_filter":
            inner = {"code": "ResponsibleAIPolicyViolation", "content_filter_result": _filter_results(True)}
            return {
                "error": {
                    "message": error.message,
                    "type": None,
                    "param": error.param,
                    "code": error.code,
                    "status": 400,
                    "innererror": inner,
                }
            }
        if error.status == 429:
            wait_s = max(1, math.ceil(error.retry_after_s or 0))
            limit = error.limit.limited_by if error.limit and error.limit.limited_by else "call"
            what = "token" if limit == "tokens" else "call"
            message = (
                f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version"
                f" {self.api_version} have exceeded {what} rate limit of your current OpenAI S0 pricing"
                f" tier (resource {organization}, deployment {self.deployment})."
                f" Please retry after {wait_s} second{'s' if wait_s != 1 else ''}."
            )
            return {"error": {"code": "429", "message": message}}
        if error.status in _MESSAGES:
            return {"error": {"code": str(error.status), "message": _MESSAGES[error.status]}}
        return super().error_body(error, request, request_id, organization=organization)
