"""Outbound HTTP to receivers we do not trust: target checks and Standard Webhooks signing
(used by the subscription deliverer, `service.usecases.delivery`)."""
