"""The real point function: train the hardware-aware and the regular network of a point (or of a
seed group, as one batched model) and evaluate both by Monte-Carlo transfers.

torch is imported inside the functions, so the rest of the sweep imports without it.
"""

from __future__ import annotations

import functools
import time

from training.defaults import NETWORKS
from training.errors import SweepError

#: data order (mini-batch shuffling, held-out validation split) and the evaluation transfers are
#: seeded by these constants, not by the point's seed: a batched model shares one data order and
#: one set of evaluation transfers among its K networks, so a point trained alone must use the
#: same ones to give the same result. The point's seed sets each network's initialisation and
#: its training noise (per-network generators in training.train).
DATA_SEED = 0
EVAL_SEED = 0


@functools.lru_cache(maxsize=4)
def _load_db(db: str):
    """The non-ideality DB of a point, loaded once per worker process."""
    if db == "reference":
        from database.reference import import_reference

        return import_reference()
    from database.nonideality import load_nonideality

    return load_nonideality(db)


def run_point(params: dict) -> dict:
    """Train the hardware-aware and the regular network of one point and evaluate both.

    Both networks are evaluated under the same non-idealities (the regular one has the point's
    noise model attached after training, as the paper does), on the dataset's test set, with
    ``params['transfers']`` Monte-Carlo transfers. The digits train/test split is fixed (seed
    0), and so are the data order and the evaluation transfers (DATA_SEED, EVAL_SEED), so that
    seeds vary only the networks and their training noise. Same as ``run_group([params])``.
    """
    return run_group([params])[0]


def run_group(group: list[dict]) -> list[dict]:
    """Train and evaluate points that differ only by seed as one batched model per kind.

    `group` holds resolved parameters (training.sweep.spec.expand). Network j of the K-network
    model is initialised from, and draws its training noise from, point j's seed; all K share
    the data order and the evaluation transfers (as a point run alone does: DATA_SEED,
    EVAL_SEED). So each point's result equals :func:`run_point`'s up to the rounding of batched
    matrix products. ``train_s`` and ``eval_s`` of a point are its share (1/K) of the batched
    model's times; ``steps`` is its own network's step count.
    """
    from database.datasets import load_dataset
    from training.evaluate import evaluate_transfers
    from training.noise import NoiseConfig
    from training.train import train, train_config

    if not group:
        return []
    params = group[0]
    for other in group[1:]:
        diff = [k for k in params if k != "seed" and other.get(k) != params[k]]
        if diff or set(other) != set(params):
            raise SweepError(f"run_group: points differ in {diff or 'their parameter names'}, "
                             "not only in seed")
    seeds = [int(p["seed"]) for p in group]
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"run_group: repeated seeds {seeds}")
    k = len(seeds)

    db = _load_db(params["db"])
    data = load_dataset(params["dataset"])
    x_tr, y_tr = data["train"]
    x_te, y_te = data["test"]
    x_rate, y_rate = params["stuck_hrs_rate"], params["stuck_lrs_rate"]
    noise = NoiseConfig(tuning_scale=params["tuning_sigma_scale"],
                        disturbance_scale=params["disturbance_scale"],
                        stuck_hrs_rate=x_rate, stuck_lrs_rate=y_rate)

    per_point: list[dict[str, dict]] = [{} for _ in group]
    device = None
    for kind in params.get("kinds") or NETWORKS:
        cfg = train_config(
            params["dataset"], hidden=params["hidden"], activation=params["activation"],
            epochs=params["epochs"], lr=params["lr"], batch_size=params["batch_size"],
            patience=params["patience"], tile_rows=params["tile_size"],
            tile_cols=params["tile_size"], share_bias=params["share_bias"],
            mapping=params["mapping"], noise=noise, data_seed=DATA_SEED, seed=seeds[0], k=k,
            seed_list=tuple(seeds), hardware_aware=(kind == "hardware_aware"))
        res = train(cfg, x_tr, y_tr, db)
        model = res.model
        device = str(model.layers[0].weight.device)
        # both networks see the same non-idealities at evaluation (the paper's comparison)
        t0 = time.perf_counter()
        ev = evaluate_transfers(model, x_te, y_te, params["transfers"], db,
                                mapping=cfg.mapping, noise=noise, seed=EVAL_SEED)
        eval_s = time.perf_counter() - t0
        steps = res.steps_per_network or [res.steps] * k
        for j in range(k):
            metrics = _metrics_from_evaluation(ev.summary(j))
            metrics.update(steps=steps[j], train_s=res.seconds / k, eval_s=eval_s / k)
            per_point[j][kind] = metrics
    used = {"stuck_hrs_rate": db.stuck_hrs_rate if x_rate is None else x_rate,
            "stuck_lrs_rate": db.stuck_lrs_rate if y_rate is None else y_rate,
            "stuck_rate": (db.stuck_hrs_rate + db.stuck_lrs_rate
                           if x_rate is None else x_rate + y_rate)}
    return [{"kinds": kinds, "device": device, "params_used": dict(used)} for kinds in per_point]


def _metrics_from_evaluation(summary: dict) -> dict[str, float]:
    """Flatten training.evaluate's summary of one network into the sweep's metric columns:
    share_correct_<q> for every threshold q (share_correct_95 is the paper's metric) and the
    transfer-accuracy statistics."""
    out = {"share_correct_95": float(summary["share_correct_95"])}
    for q, v in summary["share_correct"].items():  # keys like ">=95%"
        out[f"share_correct_{q.strip('>=%')}"] = float(v)
    for name in ("transfer_acc_mean", "transfer_acc_p05", "clean_acc", "transfer_acc_std",
                 "transfer_acc_median", "transfer_acc_min"):
        out[name] = float(summary[name])
    return out
