"""The internal HTTP API (docs/api.md): ``build_api_app`` composes it (see ``app``)."""

from service.entrypoints.api.app import build_api_app

__all__ = ["build_api_app"]
