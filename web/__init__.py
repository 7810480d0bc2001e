"""The Flask application factory: `create_app(cfg)` wires the search service, API blueprints, errors and metrics."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from flask import Flask

from search.online.traffic import Traffic
from search.query.engine import SearchService
from search.store.interface import Store
from vitrina.config import Config, load_config
from web.deps import api_keys
from web.errors import register_error_handlers
from web.json_provider import use_fast_json

log = logging.getLogger(__name__)

# Blueprints from other parts of the project, registered when their module exists in this build.
OPTIONAL_BLUEPRINTS = ("web.page", "web.api_recommend", "web.api_experiments")
FORM_SLACK_BYTES = 64 * 1024  # room for the form fields next to a maximum-size photo


def create_app(cfg: Config | None = None, store: Store | None = None, **overrides: Any) -> Flask:
    """A configured app. cfg defaults to load_config(); `store` injects a Store; other keywords go to app.config.

    The search service (and every model) is created lazily: building the app never imports torch.
    """
    cfg = cfg if cfg is not None else load_config()
    app = Flask(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=cfg.search.max_upload_bytes + FORM_SLACK_BYTES,
        VITRINA_CONFIG=cfg,
    )
    app.config.update(overrides)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    use_fast_json(app)
    service = SearchService(cfg, store=store)
    app.extensions["vitrina"] = service
    app.extensions["vitrina_traffic"] = Traffic(service)
    app.extensions["vitrina_config"] = cfg
    app.extensions["vitrina_api_keys"] = api_keys(cfg)

    from web import api_feedback, api_items, api_search, api_users, api_write, meta

    for module in (api_search, api_items, api_write, api_feedback, api_users, meta):
        app.register_blueprint(module.bp)
    for name in OPTIONAL_BLUEPRINTS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            log.debug("optional blueprint %s not in this build", name)
            continue
        app.register_blueprint(module.bp)
    meta.init_metrics(app)
    register_error_handlers(app)
    return app
