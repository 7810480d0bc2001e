"""What views share: the app's SearchService and Config, request parameters as lists, and the API-key check."""

from __future__ import annotations

import functools
import hmac
import os
from typing import Any, Callable, TypeVar

from flask import current_app, request

from search.online.traffic import Traffic
from search.query.engine import SearchService
from vitrina.config import Config
from vitrina.errors import Unauthorized

F = TypeVar("F", bound=Callable[..., Any])


def get_service() -> SearchService:
    return current_app.extensions["vitrina"]


def get_traffic() -> Traffic:
    """The app's Traffic: the service's responses assigned to variants, logged and stamped."""
    return current_app.extensions["vitrina_traffic"]


def get_config() -> Config:
    return current_app.extensions["vitrina_config"]


def api_keys(cfg: Config) -> tuple[str, ...]:
    """[web].api_keys plus the comma-separated keys in the env var named by [web].api_keys_env."""
    extra = os.environ.get(cfg.web.api_keys_env, "") if cfg.web.api_keys_env else ""
    keys = [k for k in cfg.web.api_keys if k] + [k.strip() for k in extra.split(",") if k.strip()]
    return tuple(dict.fromkeys(keys))


def args_lists() -> dict[str, list[str]]:
    """The query string as {key: [values]}."""
    return {k: request.args.getlist(k) for k in request.args}


def requires_key(view: F) -> F:
    """Writes and profile reads need `Authorization: Bearer KEY` when keys are configured (constant-time compare)."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        keys = current_app.extensions.get("vitrina_api_keys", ())
        if keys:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("API key required", "send 'Authorization: Bearer KEY' (writes and shopper profiles)")
            given = token.strip().encode()
            if not any(hmac.compare_digest(given, k.encode()) for k in keys):
                raise Unauthorized("invalid API key", "the key in 'Authorization: Bearer KEY' is not accepted")
        return view(*args, **kwargs)

    wrapped.requires_key = True  # type: ignore[attr-defined]
    return wrapped  # type: ignore[return-value]
