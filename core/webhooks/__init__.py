"""Outgoing webhooks: Standard Webhooks signing and SSRF-safe delivery over HTTP.

`signing` makes secrets and the `webhook-*` headers (several signatures during a secret's
rotation), `ssrf` decides which URLs and addresses a webhook may reach, and `sender` makes
one delivery attempt to an address that was checked, returning its outcome instead of raising.
Retry schedules, the attempt log and endpoint state belong to the callers.
"""
