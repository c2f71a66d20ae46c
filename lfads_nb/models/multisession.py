"""Multisession stitching: one shared LFADS core, each recording session with its own ends.

Sessions of one task record different neurons, so each needs its own way in and out of the
shared dynamics (lfads-torch ``modules/readin_readout.py``; Pandarinath et al. 2018):

    session s, x (B, T, N_s) --read-in: (x_heldin - m_s) W_s--> (B, T, K)     K = encod_dim
    all sessions' read-in inputs, concatenated along trials --> one LFADS core --> factors
    factors of session s's trials --session s's observation model--> its rates (B, T, N_s)

PCR initialisation of the read-ins (``pcr_read_in``), as the original TF LFADS
(``synthetic_data_utils.add_alignment_projections``, plain least squares) and lfads-torch (ridge):

1. per session, the condition-averaged PSTHs of the 'train' trials, P_s (C, T, E_s) for its E_s
   held-in neurons, smoothed in time with a Gaussian of ``smooth_bins`` bins;
2. the sessions concatenated along neurons into (C T, sum E_s), centred, and its top K principal
   components: the global scores Z (C T, K);
3. per session, W_s = argmin_W || (P_s - m_s) W - Z ||^2 (``numpy.linalg.lstsq``), m_s the
   session's mean PSTH per neuron. The read-in is then x -> (x - m_s) W_s: each session's
   neurons are mapped onto the same global components.

The read-ins stay frozen by default (lfads-torch's choice: the core then has to share one space
across sessions); ``train_read_in=True`` trains them too (the original run-manager's default).
Each session's observation model starts at its neurons' mean rates, as in a single-session model.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr
from scipy.ndimage import gaussian_filter1d
from torch import Tensor, nn

from ..data.kinds import kind_of
from ..data.schema import heldin_mask, observed_variable, training_values
from ..data.sessions import session_names, validate_sessions
from ..errors import ConfigError, DataError
from ..transforms import Batch
from .lfads import LFADS, LFADSConfig, LFADSOutput, Noise, SessionEnds, encoder_read_in
from .observations import make_observation


@dataclasses.dataclass
class StitchedConfig(LFADSConfig):
    """An ``LFADSConfig`` for several sessions: ``encod_dim`` is the read-in width K (the number
    of global components), ``n_neurons`` the sessions' neurons together; ``sessions`` maps each
    session's name to its held-in flags, one per neuron (True: the encoder reads it), in order;
    ``train_read_in`` trains the read-ins (default False: frozen at their PCR start)."""

    sessions: dict = dataclasses.field(default_factory=dict)
    train_read_in: bool = False

    def __post_init__(self):
        if self.encod_dim is None:
            raise ConfigError("StitchedConfig.encod_dim is the read-in width (global components); give it, e.g. 20.")
        if not isinstance(self.sessions, Mapping) or not self.sessions:
            raise ConfigError("StitchedConfig.sessions maps each session's name to its held-in flags; give at least "
                              "one session (lfads_nb.build_model(tree, ...) fills it from the data).")
        self.sessions = {str(name): [bool(flag) for flag in flags] for name, flags in self.sessions.items()}
        if self.n_neurons != sum(len(flags) for flags in self.sessions.values()):
            raise ConfigError(f"StitchedConfig.n_neurons={self.n_neurons} must be the sessions' neurons together, "
                              f"{sum(len(f) for f in self.sessions.values())}.")
        if not isinstance(self.train_read_in, bool):
            raise ConfigError(f"StitchedConfig.train_read_in must be True or False, got {self.train_read_in!r}.")
        super().__post_init__()


class PCRReadIn(nn.Module):
    """A session's linear read-in: its held-in channels, centred and projected onto the shared
    input space. (..., N) -> (..., K) = (x[..., heldin] - mean) @ weight, stored as weight
    (E, K) and bias = -mean @ weight (K,). ``trainable`` False freezes both."""

    def __init__(self, heldin: Tensor, width: int, trainable: bool):
        super().__init__()
        self.register_buffer("index", torch.as_tensor(heldin, dtype=torch.bool).nonzero().squeeze(-1))
        self.weight = nn.Parameter(torch.zeros(len(self.index), width), requires_grad=trainable)
        self.bias = nn.Parameter(torch.zeros(width), requires_grad=trainable)

    @torch.no_grad()
    def set_projection(self, mean: np.ndarray, weight: np.ndarray) -> None:
        """Read in as (x - mean) @ weight: mean (E,), weight (E, K)."""
        w = torch.as_tensor(weight, dtype=self.weight.dtype)
        self.weight.copy_(w)
        self.bias.copy_(-torch.as_tensor(mean, dtype=w.dtype) @ w)

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(-1, self.index) @ self.weight + self.bias


# --------------------------------------------------------------------------------------------
# PCR initialisation
# --------------------------------------------------------------------------------------------


def condition_psths(ds: xr.Dataset, conditions, smooth_bins: float) -> np.ndarray:
    """The mean counts per bin of ``ds``'s held-in neurons over its 'train' trials (all trials if
    none is labelled 'train') of each of ``conditions``: (C, T, E), smoothed in time by a
    Gaussian of std ``smooth_bins`` bins (0: not smoothed). NaN (unobserved) entries are skipped."""
    is_train = ds["split"].values.astype(str) == "train"
    rows = is_train if is_train.any() else np.ones_like(is_train)
    data = ds[observed_variable(ds)].values[:, :, heldin_mask(ds)].astype(np.float64)[rows]
    labels = ds["condition"].values[rows]
    psths = np.stack([np.nanmean(data[labels == c], axis=0) for c in conditions])
    return gaussian_filter1d(psths, smooth_bins, axis=1, mode="nearest") if smooth_bins > 0 else psths


def pcr_read_in(datasets: Mapping[str, xr.Dataset], n_components: int, smooth_bins: float = 1.0):
    """PCR read-ins (module docstring): ``{session: (mean (E_s,), weight (E_s, K))}`` and the
    fraction of the PSTHs' variance the K global components explain.

    Every session's training trials must hold every condition any session has: the global
    components are computed on the sessions' PSTHs side by side, condition by condition.
    """
    names = list(datasets)
    for name in names:
        if "condition" not in datasets[name].coords:
            raise DataError(f"Session '{name}' has no 'condition' coord; the PCR read-in needs condition-averaged "
                            "PSTHs. Add each trial's condition (ds.assign_coords(condition=('trial', labels))).")
    per_session = {}
    for name in names:
        ds = datasets[name]
        is_train = ds["split"].values.astype(str) == "train"
        per_session[name] = set(ds["condition"].values[is_train if is_train.any() else slice(None)].tolist())
    conditions = sorted(set().union(*per_session.values()), key=str)
    for name in names:
        missing = [c for c in conditions if c not in per_session[name]]
        if missing:
            raise DataError(
                f"Session '{name}' has no training trials of conditions {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}, which other sessions have; the PCR read-in averages "
                "every condition in every session. Drop those conditions' trials from the other sessions "
                "(ds.where(~ds.condition.isin(missing), drop=True)), or label some of this session's trials of "
                "them 'train'.")
    psths = {name: condition_psths(datasets[name], conditions, smooth_bins) for name in names}
    stacked = np.concatenate([p.reshape(-1, p.shape[-1]) for p in psths.values()], axis=1)  # (C T, sum E)
    if not 1 <= n_components <= min(stacked.shape):
        raise ConfigError(f"The read-in width (encod_dim) is {n_components}, but the PSTHs ({len(conditions)} "
                          f"conditions x {psths[names[0]].shape[1]} bins, {stacked.shape[1]} held-in neurons in all) "
                          f"have at most {min(stacked.shape)} components; use encod_dim <= {min(stacked.shape)}.")
    centred = stacked - stacked.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    scores = centred @ vt[:n_components].T  # (C T, K) global component scores
    explained = float((singular[:n_components] ** 2).sum() / (singular ** 2).sum())
    read_ins = {}
    for name, p in psths.items():
        flat = p.reshape(-1, p.shape[-1])
        mean = flat.mean(axis=0)
        weight, *_ = np.linalg.lstsq(flat - mean, scores, rcond=None)
        read_ins[name] = (mean, weight)
    return read_ins, explained


# --------------------------------------------------------------------------------------------
# The stitched model
# --------------------------------------------------------------------------------------------


class StitchedLFADS(LFADS):
    """One LFADS core with ``sessions`` (an ``nn.ModuleDict`` of ``SessionEnds``: a ``PCRReadIn``
    and an observation model per session).

    The model protocol takes the batches of a step as ``{session: Batch}``: ``loss`` runs every
    session's trials through the core together, so each step's gradient reaches the shared
    weights from all the sessions in it. ``for_session(name)`` is the single-session model of one
    session (the same weights), which ``infer`` and validation use on one session's Dataset.
    """

    def __init__(self, config: StitchedConfig, *, fused: bool = True):
        if not isinstance(config, StitchedConfig):
            raise ConfigError(f"StitchedLFADS needs a StitchedConfig, got {type(config).__name__}.")
        super().__init__(config, fused=fused)

    def add_session_ends(self, heldin) -> None:
        c = self.config
        self.sessions = nn.ModuleDict({
            name: SessionEnds(PCRReadIn(torch.tensor(flags), c.encod_dim, c.train_read_in),
                              make_observation(c.observation, len(flags), c.fac_dim))
            for name, flags in c.sessions.items()})

    def for_session(self, name: str) -> SessionModel:
        if name not in self.sessions:
            raise DataError(f"The model has no session {name!r}; its sessions are {list(self.sessions)}.")
        return SessionModel(self, name)

    # ---- forward over several sessions ----------------------------------------------------

    def run_sessions(self, batches: Mapping[str, Batch], *, sample: bool, noise: Noise | None = None,
                     dropout=None) -> tuple[LFADSOutput, dict[str, Tensor]]:
        """The core on all sessions' trials at once (concatenated in the order of ``batches``);
        returns its output and each session's observation parameters (B_s, T, N_s, k)."""
        for name in batches:
            if name not in self.sessions:
                raise DataError(f"Batch of unknown session {name!r}; the model's sessions are {list(self.sessions)}.")
            if batches[name].ext is not None:
                raise DataError("A StitchedLFADS takes no external inputs; drop 'ext_input' from the sessions.")
        x = torch.cat([encoder_read_in(self.sessions[name].read_in, b, self.config.log1p_encoder_input)
                       for name, b in batches.items()])
        out = self.core(x, None, sample=sample, noise=noise, dropout=dropout)
        sizes = [b.target.shape[0] for b in batches.values()]
        params = {name: self.sessions[name].observation(f)
                  for name, f in zip(batches, out.factors.split(sizes))}
        return out, params

    def loss(self, batches: Mapping[str, Batch], weights: Mapping, *, noise: Noise | None = None,
             dropout=None) -> tuple[Tensor, dict[str, Tensor]]:
        """``objective`` of a training forward pass on a step's ``{session: Batch}``."""
        out, params = self.run_sessions(batches, sample=True, noise=noise, dropout=dropout)
        return self.objective(out, batches, weights, params)

    def objective(self, out: LFADSOutput, batches: Mapping[str, Batch], weights: Mapping,
                  params: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``LFADS.objective`` over several sessions: recon is the mean NLL over every counted
        entry of every session in the step (each entry weighs the same, whatever its session),
        the KL terms are averaged over all the step's trials, and every session's observation
        penalty is added."""
        w = weights
        nll_sum, count = 0.0, 0
        for name, batch in batches.items():
            nll = self.sessions[name].observation.nll(params[name], batch.target)
            nll_sum = nll_sum + (nll * batch.loss_mask).sum()
            count = count + batch.loss_mask.sum()
        recon = nll_sum / count.clamp(min=1)
        kl_ic, kl_co = out.kl_ic.mean(), out.kl_co.mean()
        l2 = self.l2_penalties()
        penalty = sum(self.sessions[name].observation.penalty() for name in batches)
        loss = (
            recon
            + w["kl_ramp"] * (w["kl_ic_scale"] * kl_ic + w["kl_co_scale"] * kl_co)
            + w["l2_ramp"] * (w["l2_gen_scale"] * l2["l2_gen"] + w["l2_con_scale"] * l2["l2_con"])
            + penalty
        )
        return loss, {"train_recon": recon, "kl_ic": kl_ic, "kl_co": kl_co, "l2": l2["l2_gen"] + l2["l2_con"]}

    def check_data(self, tree) -> None:
        """Raise DataError unless ``tree`` holds the sessions the model was built for, each with
        its neurons and held-in neurons."""
        names = list(tree.children) if isinstance(tree, xr.DataTree) else None
        if names != list(self.sessions):
            raise DataError(f"The model was built for sessions {list(self.sessions)}, but the data hold "
                            f"{names if names is not None else type(tree).__name__}. Build the model for these "
                            "sessions with lfads_nb.build_model(tree, ...).")
        for name in names:
            self.for_session(name).check_data(tree[name].to_dataset())


class SessionModel(nn.Module):
    """One session of a ``StitchedLFADS`` as a single-session model (the model protocol on that
    session's Batch): its read-in, the shared core, its observation model. Holds the stitched
    model's own weights, not a copy."""

    def __init__(self, stitched: StitchedLFADS, name: str):
        super().__init__()
        self.stitched, self.name = stitched, name
        self.config, self.output_dims = stitched.config, stitched.output_dims

    @property
    def observation(self):
        return self.stitched.sessions[self.name].observation

    def entry_nll(self, batch: Batch) -> Tensor:
        """As ``LFADS.entry_nll``, with this session's ends."""
        _, params = self.stitched.run_sessions({self.name: batch}, sample=False)
        return self.observation.nll(params[self.name], batch.target)

    def infer_batch(self, batch: Batch, *, sample: bool) -> dict[str, Tensor]:
        out, params = self.stitched.run_sessions({self.name: batch}, sample=sample)
        return {"mean": self.observation.mean(params[self.name]), "factors": out.factors, "inputs": out.inputs,
                "ic_mean": out.ic_mean, "generator_states": out.gen_states}

    def check_data(self, ds: xr.Dataset) -> None:
        flags = self.config.sessions[self.name]
        heldin = heldin_mask(ds)
        if len(flags) != ds.sizes["neuron"] or heldin.tolist() != flags or "ext_input" in ds:
            raise DataError(
                f"Session '{self.name}' of the model has {len(flags)} neurons ({sum(flags)} held in) and no external "
                f"inputs, but the data have {ds.sizes['neuron']} neurons ({int(heldin.sum())} held in)"
                f"{' and external inputs' if 'ext_input' in ds else ''}. Build the model for these sessions with "
                "lfads_nb.build_model(tree, ...).")


def build_stitched(tree: xr.DataTree, train_config=None, *, seed: int | None = None, train_read_in: bool = False,
                   smooth_bins: float = 1.0, **sizes) -> StitchedLFADS:
    """A ``StitchedLFADS`` for the sessions of ``tree`` (``lfads_nb.build_model(tree, ...)`` comes here):
    its read-ins PCR-initialised (``pcr_read_in`` with ``smooth_bins``), frozen unless ``train_read_in``;
    each observation model started at its session's mean rates on the 'train' trials (as
    ``build_model``; ``train_config``'s sample validation holds its entries out). ``sizes``:
    ``LFADSConfig`` fields; ``encod_dim`` is the read-in width, by default (or None) the fewest
    held-in neurons of any session (a session's read-in has no more independent directions than it
    has neurons). ``seed`` as in ``build_model``.
    """
    validate_sessions(tree)
    datasets = {name: tree[name].to_dataset() for name in session_names(tree)}
    for name in ("n_neurons", "ext_input_dim", "sessions"):
        if name in sizes:
            raise ConfigError(f"{name} is read from the data (or is an argument); do not pass it in the model sizes.")
    for name, ds in datasets.items():
        if "ext_input" in ds:
            raise DataError(f"Session '{name}' has external inputs; a stitched model takes none. Drop them with "
                            "ds.drop_vars('ext_input').")
        if not heldin_mask(ds).any():
            raise DataError(f"Session '{name}': every neuron is marked held out, so its read-in would see nothing. "
                            "Mark only the neurons to predict as held out.")
    heldin = {name: heldin_mask(ds).tolist() for name, ds in datasets.items()}
    if sizes.get("encod_dim") is None:
        sizes["encod_dim"] = min(sum(flags) for flags in heldin.values())
    first = next(iter(datasets.values()))
    sizes.setdefault("observation", kind_of(first).default_observation(first))
    sv = (train_config.sv_fraction, train_config.sv_seed) if train_config is not None else ()
    fit_on = {name: training_values(ds, *sv) for name, ds in datasets.items()}
    read_ins, explained = pcr_read_in(datasets, sizes["encod_dim"], smooth_bins)
    config = StitchedConfig(n_neurons=sum(len(flags) for flags in heldin.values()), sessions=heldin,
                            train_read_in=train_read_in, **sizes)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = StitchedLFADS(config)
    for name, ends in model.sessions.items():
        ends.read_in.set_projection(*read_ins[name])
        ends.observation.init_from_data(torch.as_tensor(fit_on[name]))
    model.pcr_explained_variance = explained  # fraction of the PSTHs' variance in the read-in space
    return model


@torch.no_grad()
def read_in_psths(model: StitchedLFADS, tree: xr.DataTree, conditions, smooth_bins: float = 1.0) -> xr.DataArray:
    """Each session's condition-averaged PSTHs (``condition_psths``) through its own read-in:
    (session, condition, time, component). PCR makes the sessions' curves agree, since each
    read-in maps its own neurons onto the same global components."""
    curves = {}
    for name, ends in model.sessions.items():
        ds = tree[name].to_dataset()
        psths = torch.as_tensor(condition_psths(ds, conditions, smooth_bins), dtype=ends.read_in.weight.dtype)
        # the read-in takes all N neurons and picks its held-in ones: put the PSTHs at those places
        full = psths.new_zeros(*psths.shape[:2], ds.sizes["neuron"])
        full[..., ends.read_in.index] = psths
        curves[name] = ends.read_in(full).cpu().numpy()
    return xr.DataArray(np.stack(list(curves.values())), dims=("session", "condition", "time", "component"),
                        coords={"session": list(curves), "condition": list(conditions),
                                "time": tree[next(iter(curves))]["time"].values},
                        name="read_in_psths")
