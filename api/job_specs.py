"""From a validated HTTP request to the core's `JobSpec`: model check, defaults, options.

Shared by `POST /v1/jobs`, each batch line and `POST /v1/chat/completions`, so the three
accept exactly the same bodies and say the same things about bad ones.
"""

from __future__ import annotations

from datetime import UTC

from api.deps import Principal
from api.schemas import JobRequest
from core.config import GatewayConfig
from core.errors import InvalidRequest
from core.services.submit import JobSpec
from core.settings import Settings
from core.webhooks.ssrf import UrlPolicy


def check_model(config: GatewayConfig, model: str, param: str = "model") -> None:
    if config.targets_for(model) is None:
        known = ", ".join(config.known_models())
        raise InvalidRequest(f"The model {model!r} does not exist. Known models: {known}.", param=param)


def check_output_bound(config: GatewayConfig, request: JobRequest, param_prefix: str = "") -> None:
    """`max_tokens` may not pass what the model's targets can answer (their `max_output_tokens`):
    a reservation for a million tokens would hold a provider's budget from everyone else."""
    asked, field = request.max_completion_tokens, "max_completion_tokens"
    if asked is None:
        asked, field = request.max_tokens, "max_tokens"
    limit = config.output_limit(request.model)
    if asked is not None and asked > limit:
        raise InvalidRequest(
            f"{field} is {asked}, more than model {request.model!r} can answer ({limit} tokens,"
            " its targets' max_output_tokens in the config); ask for at most that.",
            param=f"{param_prefix}{field}",
        )


def check_webhook_url(settings: Settings, url: str, param: str = "webhook_url") -> None:
    """Refuse at submission what is plainly bad (scheme, private literal, userinfo...);
    what DNS returns is checked again at delivery time, on the connection itself."""
    try:
        UrlPolicy.from_settings(settings).check_url_syntax(url)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, param=param) from None


def job_spec(
    request: JobRequest,
    *,
    config: GatewayConfig,
    settings: Settings,
    default_priority: str,
    custom_id: str | None = None,
    param_prefix: str = "",
    allow_stream: bool = False,
    principal: Principal | None = None,
) -> JobSpec:
    """`allow_stream`: the route streams its answer (the chat route); elsewhere `stream` is a 400."""
    if request.stream and not allow_stream:
        raise InvalidRequest(
            "stream=true is not supported yet; omit it (jobgate answers when the job is done).",
            param=f"{param_prefix}stream",
        )
    check_model(config, request.model, param=f"{param_prefix}model")
    check_output_bound(config, request, param_prefix)
    if principal is not None:
        principal.check_model(request.model)
        if default_priority == "batch":  # batch work raising itself needs the key's consent
            principal.check_priority(request.priority)
    if request.webhook_url is not None:
        check_webhook_url(settings, request.webhook_url, param=f"{param_prefix}webhook_url")
    deadline = request.deadline
    if deadline is not None and deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=UTC)
    return JobSpec(
        body=request.chat_body(),
        priority=request.priority or default_priority,
        webhook_url=request.webhook_url,
        metadata=request.metadata,
        use_cache=config.cache.default if request.cache is None else request.cache,
        deadline=deadline,
        custom_id=custom_id,
        api_key_id=principal.key_id if principal is not None else None,
    )
