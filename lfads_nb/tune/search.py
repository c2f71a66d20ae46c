"""Hyperparameter search: the search space as data, and a random search over it.

The pieces, in the order a search uses them:

1. ``Hyperparameter`` and ``SearchSpace``: which fields to tune and over what range. A space is
   plain data the user edits; ``DEFAULT_SPACE`` is AutoLFADS's (reference section 5). Names
   are those of ``lfads_nb.tune.hyperparameters.HYPERPARAMETERS``: ``TrainConfig`` fields (``lr``,
   ``cd_rate``, ``kl_co_scale``, ...) or ``LFADSConfig`` fields (``dropout``); ``init`` and
   ``explore_width`` are for population-based training.
2. ``SearchSpace.sample(n, seed)``: ``n`` seeded points, each a dict name -> value.
3. ``apply_point(point, train_config, model_sizes)``: the ``TrainConfig`` and model sizes of
   one point.
4. ``run_scores(result, ds)``: what one trained model is judged by: validation NLL and
   sample-validation NLL at its selected epoch, rate R^2 against ``rates_true``, and
   ``spike_echo``, the signature of identity overfitting (a model that copies its input spikes).
5. ``random_search(ds, n_models, ...)``: train ``n_models`` models one after another in this
   process and return a :class:`SearchResult`: a tidy table (Dataset with dim ``model``) and
   the trained models.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from ..dashboard import Progress
from ..data.schema import validate
from ..errors import ConfigError, TrainingDiverged
from ..metrics import rate_r2, spike_echo
from ..models.registry import build_model, get_family
from ..training.loop import TrainConfig, TrainResult, infer, train
from .hyperparameters import by_owner, check_known, check_sizes, check_tunable, check_value


@dataclass(frozen=True)
class Hyperparameter:
    """One tuned field and its range.

    ``name``: a tunable field (``lfads_nb.tune.hyperparameters.HYPERPARAMETERS``). Values are drawn
    uniformly in [low, high], or log-uniformly when ``log`` (then low > 0). ``init``: the value
    population-based training starts from (None: sampled like the random search, which always
    samples). ``explore_width`` w: PBT perturbs a value by a factor 1 +- U[0.002 w, w] (in log
    space when ``log``); 0 < w < 1.
    """

    name: str
    low: float
    high: float
    log: bool = True
    init: float | None = None
    explore_width: float = 0.3

    def __post_init__(self):
        check_known(self.name)
        for what in ("low", "high"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"Hyperparameter {self.name!r}: {what} must be a finite number, got {value!r}.")
        if not self.low < self.high:
            raise ConfigError(
                f"Hyperparameter {self.name!r}: low ({self.low}) must be below high ({self.high}); to fix a value, "
                "leave it out of the space and set it in train_config / model_sizes."
            )
        if self.log and self.low <= 0:
            raise ConfigError(
                f"Hyperparameter {self.name!r}: a log-scale range needs low > 0, got {self.low}; use log=False "
                "or a positive low."
            )
        if self.init is not None and not self.low <= self.init <= self.high:
            raise ConfigError(f"Hyperparameter {self.name!r}: init {self.init} lies outside [{self.low}, {self.high}].")
        if not 0 < self.explore_width < 1:
            raise ConfigError(
                f"Hyperparameter {self.name!r}: explore_width must be in (0, 1), got {self.explore_width}."
            )
        for end in (self.low, self.high):  # both ends must be values the owning config accepts
            try:
                check_value(self.name, end)
            except ConfigError as err:
                raise ConfigError(f"Hyperparameter {self.name!r}: the range [{self.low}, {self.high}] "
                                  f"reaches a value the configuration rejects: {err}") from None

    def sample(self, rng: np.random.Generator) -> float:
        """One value drawn from the range (log-uniform when ``log``)."""
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))


class SearchSpace(Mapping):
    """A read-only mapping name -> :class:`Hyperparameter`, in the order given."""

    def __init__(self, hyperparameters: Iterable[Hyperparameter]):
        self._hps: dict[str, Hyperparameter] = {}
        for hp in hyperparameters:
            if not isinstance(hp, Hyperparameter):
                raise ConfigError(f"A SearchSpace holds Hyperparameter objects, got {type(hp).__name__}.")
            if hp.name in self._hps:
                raise ConfigError(f"Hyperparameter {hp.name!r} appears twice in the search space.")
            self._hps[hp.name] = hp
        if not self._hps:
            raise ConfigError("The search space is empty; give at least one Hyperparameter.")

    def __getitem__(self, name: str) -> Hyperparameter:
        return self._hps[name]

    def __iter__(self):
        return iter(self._hps)

    def __len__(self) -> int:
        return len(self._hps)

    def __repr__(self) -> str:
        rows = [f"  {hp.name}: [{hp.low:g}, {hp.high:g}]{' log' if hp.log else ''}" for hp in self.values()]
        return "SearchSpace(\n" + "\n".join(rows) + "\n)"

    def without(self, *names: str) -> "SearchSpace":
        """The same space minus ``names``: they take the TrainConfig's value (e.g. ``without('cd_rate')``
        with ``TrainConfig(cd_rate=0.0)`` to search with CD off)."""
        unknown = [n for n in names if n not in self._hps]
        if unknown:
            raise ConfigError(f"{unknown} are not in the search space ({list(self._hps)}).")
        return SearchSpace(hp for name, hp in self._hps.items() if name not in names)

    def sample(self, n: int, seed: int = 0) -> list[dict[str, float]]:
        """``n`` points, each {name: value}.

        Value ``name`` of point i comes from its own random stream, seeded by (seed, i, name):
        it does not depend on ``n`` or on the other hyperparameters in the space, so
        ``space.without('cd_rate').sample(n, seed)`` gives the same points minus ``cd_rate``
        (paired searches with and without a hyperparameter).
        """
        for what, value in (("number of points", n), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (1 if what != "seed" else 0):
                raise ConfigError(f"The {what} must be a {'positive' if what != 'seed' else 'non-negative'} integer, got {value!r}.")
        return [
            {name: hp.sample(np.random.default_rng([int(seed), i, zlib.crc32(name.encode())])) for name, hp in self._hps.items()}
            for i in range(int(n))
        ]


def apply_point(point: Mapping[str, float], train_config: TrainConfig | None = None,
                model_sizes: Mapping | None = None, model: str = "lfads") -> tuple[TrainConfig, dict]:
    """The ``TrainConfig`` and model sizes (``build_model`` keywords) of one point for the family ``model``.

    Values of ``point`` replace the fields of the same name in ``train_config`` (TrainConfig
    fields) or ``model_sizes`` (fields of the family's config, e.g. LFADS's ``dropout``). Raises
    ConfigError for a name the family cannot tune or a value a config rejects.
    """
    train_config = train_config or TrainConfig()
    sizes = dict(model_sizes or {})
    check_tunable(point, model)
    config = dataclasses.replace(train_config, **by_owner(point, "train", model))
    sizes.update(by_owner(point, "model", model))
    check_sizes(sizes, model)  # now rather than at build time (the sizes read off the data come later)
    return config, sizes


# AutoLFADS's search space (reference section 5). The reference marks only the L2 and KL scales
# as log-scale; a uniform learning rate also keeps most random-search models trainable.
DEFAULT_SPACE = SearchSpace([
    Hyperparameter("lr", 1e-5, 5e-3, log=False, init=4e-3, explore_width=0.3),
    Hyperparameter("dropout", 0.0, 0.6, log=False, explore_width=0.3),
    Hyperparameter("cd_rate", 0.01, 0.7, log=False, init=0.5, explore_width=0.3),
    Hyperparameter("l2_gen_scale", 1e-4, 1.0, log=True, explore_width=0.8),
    Hyperparameter("l2_con_scale", 1e-4, 1.0, log=True, explore_width=0.8),
    Hyperparameter("kl_co_scale", 1e-6, 1e-4, log=True, explore_width=0.8),
    Hyperparameter("kl_ic_scale", 1e-6, 1e-3, log=True, explore_width=0.8),
])

# AutoLFADS on EMG (Wimalasena et al. 2022; lfads-torch's deEMG config): temporal shift in place of
# coordinated dropout (train with TrainConfig(cd_rate=0)), its std tuned from deEMG's 3 bins.
EMG_SPACE = SearchSpace([
    *DEFAULT_SPACE.without("cd_rate", "lr").values(),
    Hyperparameter("lr", 1e-4, 2e-2, log=True, init=1e-2, explore_width=0.3),
    Hyperparameter("shift_std", 0.5, 6.0, log=False, init=3.0, explore_width=0.3),
])

# The NDT's own: its learning rate around the reference's 1e-3 and the share of bins it masks around
# the paper's 25 % (Ye & Pandarinath 2021), both per member, so PBT can tune them.
NDT_SPACE = SearchSpace([
    Hyperparameter("lr", 1e-4, 1e-2, log=True, init=1e-3, explore_width=0.3),
    Hyperparameter("mask_ratio", 0.1, 0.5, log=False, init=0.25, explore_width=0.3),
])

# The space a search of each family uses when given none.
DEFAULT_SPACES = {"lfads": DEFAULT_SPACE, "stitched": DEFAULT_SPACE, "ndt": NDT_SPACE}


def default_space(model: str = "lfads") -> SearchSpace:
    """The search space of the family ``model`` when none is given (``DEFAULT_SPACES``)."""
    get_family(model)  # an unknown family is named as such
    return DEFAULT_SPACES[model]


# ---------------------------------------------------------------------------------------------
# Judging one model
# ---------------------------------------------------------------------------------------------

def run_scores(result: TrainResult, ds: xr.Dataset) -> dict[str, float]:
    """What a trained model is compared by, at its selected (best) epoch.

    ``valid_nll``: reconstruction NLL per entry on the validation trials (nats);
    ``sv_nll``: the same on the sample-validation entries (NaN without sample validation);
    ``rate_r2``: rate R^2 of the posterior-mean rates on the validation trials against
    ``rates_true`` and ``spike_echo``: :func:`lfads_nb.metrics.spike_echo` at lag 0 on the validation trials
    (both NaN when the data have no ground truth); ``best_epoch``.
    """
    out = {"valid_nll": math.nan, "sv_nll": math.nan, "rate_r2": math.nan, "spike_echo": math.nan,
           "best_epoch": int(result.best_epoch)}
    if result.best_epoch < 0:  # diverged before its first epoch ended: nothing to judge
        return out
    row = result.history.iloc[result.best_epoch]
    out["valid_nll"] = float(row["valid_recon"])
    out["sv_nll"] = float(row.get("valid_sv_nll", math.nan))
    if "rates_true" in ds:
        valid = ds.isel(trial=np.flatnonzero(ds["split"].values == "valid"))
        rates = infer(result.model, valid)["rates"]
        out["rate_r2"] = rate_r2(rates, valid["rates_true"])
        out["spike_echo"] = float(spike_echo(rates, valid, lags=[0])[0])
    return out


# ---------------------------------------------------------------------------------------------
# Random search
# ---------------------------------------------------------------------------------------------

@dataclass
class SearchResult:
    """``table``: Dataset with dim ``model`` (see :func:`random_search`); ``runs``: the
    :class:`TrainResult` of each model (best weights, history), in the table's order."""

    table: xr.Dataset
    runs: list[TrainResult]


def _model_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([seed, i]).generate_state(1)[0] >> 1)


def random_search(
    ds: xr.Dataset,
    n_models: int,
    *,
    model: str = "lfads",
    space: SearchSpace | None = None,
    model_sizes: Mapping | None = None,
    train_config: TrainConfig | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> SearchResult:
    """Train ``n_models`` models of the family ``model`` on ``ds``, each at a random point of ``space``
    (default: the family's, ``default_space``).

    Every model starts from ``train_config`` and ``model_sizes`` (``build_model`` keywords)
    with the point's values replacing the tuned fields; models train one after another in
    this process with :func:`lfads_nb.training.train`. ``seed`` fixes the points, the weight
    initialisations and the training randomness, so the same call gives the same table.
    ``verbose`` prints one line per model.

    Returns a :class:`SearchResult` whose ``table`` has dim ``model`` (0..n_models-1) and the
    variables: each tuned hyperparameter; ``valid_nll``, ``sv_nll``, ``rate_r2``,
    ``spike_echo``, ``best_epoch`` (see :func:`run_scores`); ``epochs`` trained; ``stop_reason``
    ('max_epochs', 'early_stopping' or 'diverged': a model whose loss became NaN keeps its best
    epoch and the search goes on); ``train_seconds``; ``model_seed``. ``attrs`` record the fixed
    settings (JSON) so a saved table says how it was made.
    """
    validate(ds, require_train=True)
    space = default_space(model) if space is None else space
    if not isinstance(space, SearchSpace):
        raise ConfigError(f"space must be a SearchSpace, got {type(space).__name__}; e.g. lfads_nb.DEFAULT_SPACE.")
    if "rates_true" not in ds and verbose:
        print("no rates_true in the data: rate_r2 will be NaN")
    train_config = train_config or TrainConfig()
    model_sizes = dict(model_sizes or {})
    points = space.sample(n_models, seed)
    configs = [apply_point(p, train_config, model_sizes, model) for p in points]  # every error before any training
    rows, runs = [], []
    for i, (point, (config, sizes)) in enumerate(zip(points, configs)):
        model_seed = _model_seed(seed, i)
        config = dataclasses.replace(config, seed=model_seed)
        start = time.perf_counter()
        torch.manual_seed(model_seed)  # the weight initialisation
        try:
            result = train(build_model(ds, config, model=model, **sizes), ds, config, progress=Progress())
        except TrainingDiverged as err:  # one bad point must not end the search: keep its best epoch
            result = err.result
        seconds = time.perf_counter() - start
        metrics = run_scores(result, ds)
        rows.append({**point, **metrics, "epochs": len(result.history), "stop_reason": result.stop_reason,
                     "train_seconds": seconds, "model_seed": model_seed})
        runs.append(result)
        if verbose:
            print(_progress_line(i, n_models, point, rows[-1]), flush=True)
    table = xr.Dataset(
        {name: ("model", np.array([r[name] for r in rows])) for name in rows[0]},
        coords={"model": np.arange(n_models)},
        attrs={
            "description": f"random search: {n_models} {model} models, one row per model",
            "model": model,
            "search_seed": int(seed),
            "space": json.dumps({n: dataclasses.asdict(hp) for n, hp in space.items()}),
            "train_config": json.dumps(dataclasses.asdict(train_config)),
            "model_sizes": json.dumps(model_sizes),
        },
    )
    for name in space:
        table[name].attrs["description"] = "sampled hyperparameter"
    table["valid_nll"].attrs.update(units="nats per entry", description="validation reconstruction NLL at the best epoch")
    table["sv_nll"].attrs.update(units="nats per entry", description="NLL of the sample-validation entries at the best epoch")
    table["rate_r2"].attrs["description"] = "rate R^2 on the validation trials (posterior-mean rates vs rates_true)"
    table["spike_echo"].attrs["description"] = "spike_echo at lag 0 on the validation trials (1 = spikes copied)"
    table["train_seconds"].attrs["units"] = "s"
    return SearchResult(table, runs)


def _progress_line(i: int, n: int, point: Mapping[str, float], row: Mapping[str, float]) -> str:
    hps = " ".join(f"{k} {v:.3g}" for k, v in point.items())
    if row["best_epoch"] < 0:
        return f"model {i} ({i + 1} of {n}): {hps} -> diverged in its first epoch"
    sv = f" sv {row['sv_nll']:.4f}" if math.isfinite(row["sv_nll"]) else ""
    r2 = f" R2 {row['rate_r2']:.3f}" if math.isfinite(row["rate_r2"]) else ""
    stop = ", diverged" if row["stop_reason"] == "diverged" else ""
    return (f"model {i} ({i + 1} of {n}): {hps} -> valid {row['valid_nll']:.4f}{sv}{r2} "
            f"(best epoch {row['best_epoch'] + 1}/{row['epochs']}{stop}, {row['train_seconds']:.0f} s)")
