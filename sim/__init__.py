"""A simulated LLM upstream speaking OpenAI, Anthropic, Azure OpenAI and Gemini on one port, for
tests, demos and benchmarks.

It stands in for api.openai.com, api.anthropic.com, an Azure OpenAI resource and Gemini's
OpenAI-compatible endpoint: deterministic answers and usage,
per-second rate limits enforced like the real services, injected latency and failures, and a
record of what it saw. It imports nothing from the rest of jobgate.

Running it::

    python -m sim --host 127.0.0.1 --port 8001 [--latency-ms N] [--latency-jitter-ms N]
        [--rpm N] [--tpm N] [--fail-rate F] [--fail-status 429|500|503|529|timeout]
        [--retry-after-s S] [--hang-s S] [--organization org-ID] [--seed N] [--log-level warning]

`--port 0` picks a free port; once ready it prints `sim listening on http://HOST:PORT`.
Point `openai.OpenAI(base_url="http://HOST:PORT/v1")` or
`anthropic.Anthropic(base_url="http://HOST:PORT")` at it; any model name and any non-empty key
work (`Authorization: Bearer`, or `x-api-key` for Anthropic). Two more wire formats share the port:

- Azure OpenAI (`sim.azure_api`), for `openai.AzureOpenAI(azure_endpoint="http://HOST:PORT",
  api_version=…)`: `POST /openai/deployments/{deployment}/chat/completions?api-version=V`, the
  key in an `api-key` header (or an Entra ID token as `Authorization: Bearer`); without
  `api-version` it answers 404. The deployment's name is its model (knobs, limits, stats and the
  answer's `model`). Answers carry Azure's content-filter results; a last user message starting
  `filter_prompt:` gets Azure's 400 `code: content_filter`, one starting `filter_answer:` a 200
  with `finish_reason: content_filter`. Its 401, 404 and 429 bodies are Azure's.
- Gemini's OpenAI-compatible endpoint (`sim.gemini_api`), for `openai.OpenAI(base_url=
  "http://HOST:PORT/v1beta/openai/")`: `POST /v1beta/openai/chat/completions`, Bearer key. Its
  errors are Google's: a JSON list of one RPC status (`RESOURCE_EXHAUSTED` for a 429, with a
  `RetryInfo` detail whose `retryDelay` ("12s") is the only word on the wait: no `retry-after`
  and no rate-limit headers).

Answers: the text is `"echo: " + <text of the last user message>` (a list content's text parts
are joined with no separator). Token rule (`sim.tokens`): `tokens(text) = ceil(len(text) / 4)`;
prompt tokens = sum over messages (and Anthropic's system prompt, when given) of
`4 + tokens(content)`; completion tokens = `tokens(answer)`. A stop sequence (`stop` /
`stop_sequences`) cuts the answer before its first match (finish_reason "stop", stop_reason
"stop_sequence"); an answer over `max_tokens` (`max_completion_tokens` or `max_tokens`) is cut to
`max_tokens * 4` characters (finish_reason "length", stop_reason "max_tokens"). With `tools` and
a last user message starting `call_tool:`, it calls the first tool with `{"input": <the rest,
stripped>}` (finish_reason "tool_calls", stop_reason "tool_use").

Knobs (`sim.knobs`), set by flags at start and by `POST /sim/config` (a JSON merge, also
`{"models": {"<model>": {...}}}` per model; `GET /sim/config` shows them): `latency_ms`,
`latency_jitter_ms`, `fail_rate`, `fail_status` (400..599 or "timeout": hold the request
`hang_s` seconds, then close the connection unanswered), `retry_after_s` (Retry-After on
injected 429/503/529; Gemini's 429 `retryDelay`), `hang_s`, `rpm`, `tpm` (null = unlimited),
`organization` (default `org-sim`: the organisation id every 429's message names, injected or
the limiter's, as OpenAI's "Rate limit reached for M in organization org-… on requests per
min…" and Anthropic's "…for your organization (…)…" do; Azure's names it as the resource, Gemini's
as the project; tests set a canary there to prove it never reaches a tenant), and the global
`seed`. Headers
`x-sim-latency-ms` and `x-sim-fail-status` override latency and force a failure per request.

Limits (`sim.limits`): per API key and model, token buckets holding one second's share of
`rpm`/`tpm`, refilled continuously; a short bucket answers 429 in the provider's shape with
`retry-after` (whole seconds, at least 1) and `retry-after-ms`. Rate-limit headers
(`x-ratelimit-*`, `anthropic-ratelimit-*`) are sent only for models that have limits.

Observing (`sim.stats`): `GET /sim/stats` returns `{"requests", "calls", "rate_limited",
"input_tokens", "output_tokens", "injected_failures": {"500": n, "timeout": n}, "responses":
{"200": n, ...}, "in_flight", "max_in_flight", "in_flight_s" (the in-flight gauge integrated over
time since the last reset, in request-seconds), "first_call_at", "last_call_at", "models": {m:
counters}, "by_key": {key: counters}}`, where counters are `{"requests", "calls",
"rate_limited", "input_tokens", "output_tokens", "injected_failures"}`; `calls` counts 200s and
`rate_limited` only the limiter's 429s. `GET /sim/calls?model=M&since=T` lists recent
`{"t": arrival unix time, "status"}` (status 0: closed unanswered). `GET /sim/requests?model=M`
lists the last 1,000 model requests as sent: `{"t", "path", "query", "auth_headers" (which of
`authorization`, `api-key`, `x-api-key`, `x-goog-api-key` came), "key", "model", "status"}`.
`POST /sim/reset` zeroes stats and buckets; `?config=true` also restores the start-up knobs.
"""
