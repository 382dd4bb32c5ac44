"""Koban sandbox: an in-memory Koban simulator driven by the same statecharts."""

from .app import STATE_KEY, build_sandbox_app
from .demo import populate
from .faults import Fault
from .refusals import SandboxRefusal
from .state import SandboxState, default_rules
from .stock import SalesRep
from .webhooks import FIELDS, WEBHOOK_KINDS, Webhook, WebhookSender, make_webhook

__all__ = [
    "FIELDS",
    "STATE_KEY",
    "WEBHOOK_KINDS",
    "Fault",
    "SalesRep",
    "SandboxRefusal",
    "SandboxState",
    "Webhook",
    "WebhookSender",
    "build_sandbox_app",
    "default_rules",
    "make_webhook",
    "populate",
]
