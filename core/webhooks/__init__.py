"""Outgoing webhooks, from the outbox row to the signed HTTP request.

`outbox` writes a final job's (or completed batch's) deliveries in the transaction that made
it final; `delivery` runs one attempt of a delivery and schedules the next (retries, disabling
an endpoint that keeps failing); `admin` is the tenant-facing management of endpoints,
secrets and the delivery log; `signing` makes secrets and the Standard Webhooks `webhook-*`
headers (several signatures during a secret's rotation); `ssrf` decides which URLs and
addresses a webhook may reach; `sender` makes one attempt to an address that was checked,
returning its outcome instead of raising.
"""
