"""The online click model against a full retrain on the same log, the per-shopper bound, and its durability."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluation.ranker_fit import fit_logistic_rows
from search.online.clicks import OnlineModel, Shown, examples
from search.online.impressions import FEEDBACK, IMPRESSION, ImpressionLog, features_of
from search.online.simulator import SIM_FEATURES, make_shop, simulate, taste_features, taste_ranker
from search.query.learned import Logistic
from vitrina.config import RankerConfig

ROOT = Path(__file__).resolve().parent.parent


def click_log(searches: int = 4000, seed: int = 0) -> list[dict[str, Any]]:
    shop = make_shop(seed=seed)
    records = simulate(shop, {"a": taste_ranker(1.0)}, lambda u: "a", searches, seed=seed,
                       features=taste_features(0.5, seed))
    return sorted(records, key=lambda r: (r["ts"], r["kind"] != IMPRESSION))


def start(records: list[dict[str, Any]]) -> Logistic:
    rows = np.concatenate([features_of(r) for r in records if r["kind"] == IMPRESSION])
    return Logistic(np.zeros(2), 0.0, rows.mean(0), rows.std(0))


def run_online(records: list[dict[str, Any]], cfg: RankerConfig, begin: Logistic | None = None) -> OnlineModel:
    model = OnlineModel(begin or start(records), SIM_FEATURES, cfg, None)
    for r in records:
        if r["kind"] == IMPRESSION:
            model.remember(r["request_id"], r["user_id"], r["items"], r["offset"], features_of(r))
        else:
            model.learn(r["user_id"], r["item_id"], r["event"], r["request_id"], r["position"], now=r["ts"])
    return model


def batch_examples(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The same skip-above examples, all at once, for a full retrain."""
    shown: dict[str, Shown] = {}
    xs, ys = [], []
    for r in records:
        if r["kind"] == IMPRESSION:
            shown[r["request_id"]] = Shown(r["user_id"], r["items"], 0, features_of(r), set())
        elif r["event"] in ("click", "cart", "purchase") and r["position"] not in shown[r["request_id"]].clicked:
            s = shown[r["request_id"]]
            for row, label in examples(s, r["position"]):
                xs.append(row)
                ys.append(label)
            s.clicked.add(r["position"])
    return np.array(xs), np.array(ys)


def test_online_learner_stays_near_a_full_retrain_on_the_same_log() -> None:
    records = click_log()
    cfg = RankerConfig(online_shopper_cap=10_000)  # the shipped rate and L2
    online = run_online(records, cfg)
    x, y = batch_examples(records)
    assert online.updates == len(y) > 3000
    batch = fit_logistic_rows(x, y, l2=1.0)
    w_online, _ = online.weights()
    w_batch = batch.weights * start(records).scale / batch.scale  # both on the same standardisation
    cosine = float(w_online @ w_batch / np.linalg.norm(w_online) / np.linalg.norm(w_batch))
    assert cosine > 0.98, (w_online, w_batch)
    assert w_online[0] > 0.3 and abs(w_online[1]) < 0.15 * w_online[0]  # taste matters, noise does not
    p_online = 1 / (1 + np.exp(-online.score(x)))
    p_batch = 1 / (1 + np.exp(-batch.score(x)))
    assert float(np.abs(p_online - p_batch).mean()) < 0.02  # measured 0.013 (README: online learning)


def test_one_shopper_cannot_swing_the_model() -> None:
    records = click_log(2000)
    cfg = RankerConfig(online_rate=0.1, online_shopper_cap=50)
    fair = run_online(records, cfg)
    # a shopper who clicks only the item shown lowest, with the least taste signal, a thousand times an hour
    worst = min((r for r in records if r["kind"] == IMPRESSION), key=lambda r: features_of(r)[-1][0])
    attack = []
    for n in range(1000):
        rid = f"attack-{n}"
        attack.append({**worst, "request_id": rid, "user_id": "mallory", "ts": worst["ts"] + n})
        attack.append({"kind": FEEDBACK, "user_id": "mallory", "item_id": worst["items"][-1], "event": "click",
                       "request_id": rid, "position": len(worst["items"]) - 1, "ts": worst["ts"] + n + 0.5})
    attacked = run_online(records + attack, cfg)
    assert attacked.skipped > 0 and attacked.updates - fair.updates <= 50
    w_fair, w_attacked = fair.weights()[0], attacked.weights()[0]
    assert w_attacked[0] > 0.8 * w_fair[0]  # the taste weight survives the attack
    unbounded = run_online(records + attack, RankerConfig(online_rate=0.1, online_shopper_cap=10**9))
    assert unbounded.weights()[0][0] < w_attacked[0]  # without the bound the attack does move it


def test_checkpoint_then_crash_then_catch_up_from_the_log(tmp_path: Path) -> None:
    records = click_log(1500)
    cfg = RankerConfig(online_rate=0.1, online_shopper_cap=10_000, online_checkpoint_every=100)
    folder = tmp_path / "imp"
    code = ("import json, sys\nfrom search.online.impressions import ImpressionLog\nfrom tests.test_online import *\n"
            f"records = click_log(1500)\nlog = ImpressionLog({str(folder)!r}, sync_s=60)\n"
            f"model = OnlineModel(start(records), SIM_FEATURES, RankerConfig(online_rate=0.1, "
            f"online_shopper_cap=10_000, online_checkpoint_every=100), __import__('pathlib').Path({str(tmp_path)!r})"
            " / 'online.json')\n"
            "for i, r in enumerate(records):\n"
            "    at = log.write(r)\n"
            "    if r['kind'] == 'impression':\n"
            "        model.remember(r['request_id'], r['user_id'], r['items'], r['offset'], features_of(r))\n"
            "    else:\n"
            "        model.learn(r['user_id'], r['item_id'], r['event'], r['request_id'], r['position'], r['ts'], at)\n"
            "    if model.updates >= 1234 and model.updates % 100:\n"
            "        print('updates', model.updates, flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("updates"), line
    os.kill(proc.pid, signal.SIGKILL)  # between two checkpoints: the last 30-odd updates are only in the log
    proc.wait(timeout=60)
    saved = json.loads((tmp_path / "online.json").read_text())
    assert 0 < saved["updates"] < int(line.split()[1])
    # restart: the checkpoint, then the log after its position (the records themselves carry the positions)
    log = ImpressionLog(folder)
    restored = OnlineModel(start(records), SIM_FEATURES, cfg, tmp_path / "online.json")
    assert restored.restore() and restored.updates == saved["updates"]
    restored.replay(log.read_from(type(restored.position)()), restored.position)
    written = list(log.read())
    straight = run_online(written, cfg, start(records))  # one uninterrupted pass over what was logged
    assert restored.updates == straight.updates
    np.testing.assert_allclose(restored.weights()[0], straight.weights()[0], rtol=1e-9, atol=1e-12)
    with pytest.raises(AssertionError):  # and the checkpoint alone would have lost the last updates
        np.testing.assert_allclose(OnlineModel(start(records), SIM_FEATURES, cfg, tmp_path / "online.json")
                                   .weights()[0], straight.weights()[0], rtol=1e-9)
