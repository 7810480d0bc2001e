"""`/api/experiments` and `/api/experiments/<name>`: the running experiment and each experiment's report."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from search.online.traffic import check_name
from web.deps import get_traffic
from web.openapi import Param, spec

bp = Blueprint("experiments", __name__, url_prefix="/api")

_REPORT = {"type": "object", "description": "per variant: shoppers, impressions (responses), clicked / carted / "
           "purchased responses, revenue, and metrics (ctr, cart_rate, conversion, revenue per response) with 95% "
           "intervals clustered by shopper; comparisons with the control with always-valid intervals; a verdict; "
           "per segment; a daily timeline. Interleaving: wins per team and the preference."}


@bp.get("/experiments")
@spec("Experiments", responses={200: {"type": "object"}}, tag="experiments")
def experiments() -> ResponseReturnValue:
    """The running experiment (its variants, shares and overrides) and every experiment the log holds."""
    return jsonify(get_traffic().overview())


@bp.get("/experiments/<name>")
@spec("An experiment's report", (Param("name", "experiment name", where="path", required=True),),
      responses={200: _REPORT, 400: None, 404: None}, tag="experiments")
def report(name: str) -> ResponseReturnValue:
    """Read from the impression log: what each variant showed and what shoppers did with it, with a verdict on
    the primary metric that holds however often it is read (always-valid intervals)."""
    return jsonify(get_traffic().report(check_name(name)))
