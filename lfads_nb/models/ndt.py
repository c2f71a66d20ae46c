"""NDT: the Neural Data Transformer (Ye & Pandarinath 2021), a non-recurrent baseline for LFADS.

No dynamics, no latent variables: a transformer encoder reads the spike counts of every time bin
and predicts every bin's rates, trained by masked modelling (as BERT): whole time bins are hidden
from the input (all neurons of the bin zeroed) and the Poisson loss counts only the hidden bins,
so the model must predict a bin from its neighbours instead of copying it. At inference nothing is
hidden. Each bin attends only to ``context_backward`` bins before and ``context_forward`` after
it (per layer, so a stack of L layers sees L times as far).

Shapes: B trials, T bins, N neurons, E = encod_dim held-in neurons, D = d_model.

    x (B, T, E) --zero the masked bins--> linear (E -> D) + learnable position (T, D) --dropout-->
      L x pre-norm TransformerEncoderLayer (band attention mask) --> LayerNorm --> dropout
      --> observation readout (D -> N log rates)

NDT follows the model protocol (``lfads_nb.models.registry.Model``), so ``train``, ``infer``, ``pbt``,
checkpoints and the dashboard run it unchanged: ``loss``, ``entry_nll``, ``infer_batch`` with
``output_dims``, ``check_data``, ``check_training`` and a dataclass ``config``. Departures from the
paper's code, for a small CPU model: a linear embedding of the counts (the paper's ``LINEAR_EMBEDDER``
option) instead of a per-count lookup table, and masked bins always zeroed (its mask-token ratio 1).
The bin mask is an input (``noise``); the dropout inside the layers uses torch's global generator.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..data.schema import heldin_mask
from ..errors import ConfigError, DataError
from ..transforms import Batch, encoder_input, masked_mean
from .lfads import HeldInReadIn, SessionEnds
from .observations import ObservationModel, make_observation, observation_spec


@dataclass
class NDTConfig:
    """Architecture and masking of an NDT (sizes are widths; contexts and lengths are in bins).

    Defaults follow the reference's CPU reproduction of the paper's synthetic configs (4 layers,
    2 heads, feed-forward 128, context 10 / 10, dropouts 0.2, 25 % of bins masked).
    """

    n_neurons: int
    encod_dim: int | None = None
    n_bins: int = 100               # longest trial (the learnable positions' length)
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 2
    ff_dim: int = 128
    context_backward: int = 10      # bins before t that t attends to, per layer
    context_forward: int = 10       # bins after t that t attends to, per layer
    dropout: float = 0.2            # inside the layers (attention and feed-forward)
    dropout_embedding: float = 0.2
    dropout_rates: float = 0.2      # before the readout
    mask_ratio: float = 0.25        # fraction of bins masked per training trial
    observation: str | dict = "poisson"

    def __post_init__(self):
        if self.encod_dim is None:
            self.encod_dim = self.n_neurons
        for name in ("n_neurons", "encod_dim", "n_bins", "d_model", "n_layers", "n_heads", "ff_dim",
                     "context_backward", "context_forward"):
            value = getattr(self, name)
            minimum = 0 if name.startswith("context") else 1
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ConfigError(f"NDTConfig.{name} must be an integer >= {minimum}, got {value!r}.")
            setattr(self, name, int(value))
        if self.d_model % self.n_heads:
            raise ConfigError(f"NDTConfig.d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads}).")
        for name in ("dropout", "dropout_embedding", "dropout_rates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
                raise ConfigError(f"NDTConfig.{name} is a drop probability in [0, 1), got {value!r}.")
            setattr(self, name, float(value))
        if isinstance(self.mask_ratio, bool) or not isinstance(self.mask_ratio, numbers.Real) \
                or not 0 < self.mask_ratio < 1:
            raise ConfigError(f"NDTConfig.mask_ratio is the fraction of bins masked, in (0, 1), got "
                              f"{self.mask_ratio!r}; "
                              "without masking the model learns to copy its input.")
        self.mask_ratio = float(self.mask_ratio)
        self.observation = observation_spec(self.observation)


def band_mask(T: int, backward: int, forward: int, device=None) -> Tensor:
    """(T, T) bool attention mask, True where query t may NOT attend to key s: outside
    t - backward <= s <= t + forward."""
    offset = torch.arange(T, device=device)[None, :] - torch.arange(T, device=device)[:, None]  # s - t
    return (offset < -backward) | (offset > forward)


class NDT(nn.Module):
    """Neural Data Transformer: a masked-modelling transformer encoder over time bins.

    Submodules in data-flow order: ``session.read_in`` (the held-in neurons ``heldin`` (N,)
    bool, default the first encod_dim), ``embedding``, ``position``, ``layers``, ``norm``,
    ``session.observation`` (readout from d_model to the observation parameters + likelihood).
    """

    output_dims = {"latents": ("trial", "time", "ndt_latent")}

    def __init__(self, config: NDTConfig, *, heldin: Tensor | None = None):
        super().__init__()
        if not isinstance(config, NDTConfig):
            raise ConfigError(f"NDT needs an NDTConfig, got {type(config).__name__}.")
        self.config = c = config
        if heldin is None:
            heldin = torch.arange(c.n_neurons) < c.encod_dim
        heldin = torch.as_tensor(heldin)
        if tuple(heldin.shape) != (c.n_neurons,) or int(heldin.sum()) != c.encod_dim:
            raise ConfigError(f"heldin must be a boolean mask over the {c.n_neurons} neurons with encod_dim = "
                              f"{c.encod_dim} True entries; build the model with lfads_nb.build_model(ds, 'ndt', ...).")
        self.embedding = nn.Linear(c.encod_dim, c.d_model)
        self.position = nn.Parameter(torch.randn(c.n_bins, c.d_model) * 0.02)
        self.embedding_dropout = nn.Dropout(c.dropout_embedding)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(c.d_model, c.n_heads, c.ff_dim, c.dropout, batch_first=True, norm_first=True)
            for _ in range(c.n_layers)])
        self.norm = nn.LayerNorm(c.d_model)
        self.rates_dropout = nn.Dropout(c.dropout_rates)
        self.session = SessionEnds(HeldInReadIn(heldin), make_observation(c.observation, c.n_neurons, c.d_model))

    @property
    def observation(self) -> ObservationModel:
        return self.session.observation

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, E) encoder input, masked bins already zeroed -> (observation parameters
        (B, T, N, n_params), last hidden states (B, T, d_model))."""
        c = self.config
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != c.encod_dim or not 0 < x.shape[1] <= c.n_bins:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise DataError(f"NDT input must be a tensor (trial, time <= {c.n_bins}, {c.encod_dim}); got {shape}. "
                            "Build the model for these data with lfads_nb.build_model(ds, 'ndt', ...).")
        T = x.shape[1]
        h = self.embedding_dropout(self.embedding(x) + self.position[:T])
        mask = band_mask(T, c.context_backward, c.context_forward, x.device)
        for layer in self.layers:
            h = layer(h, src_mask=mask)
        h = self.norm(h)
        return self.observation(self.rates_dropout(h)), h

    # ---- masking ----------------------------------------------------------------------------

    def _masked_input(self, batch: Batch, masked_bins: Tensor) -> Tensor:
        """The read-in encoder input with the bins ``masked_bins`` (B, T) bool zeroed."""
        return self.session.read_in(encoder_input(batch)) * ~masked_bins[..., None]

    def _counted(self, batch: Batch, masked_bins: Tensor) -> Tensor:
        """Loss entries: observed, and in a masked bin (held-in neurons) or held out (never shown)."""
        return batch.loss_mask & (masked_bins[..., None] | ~batch.heldin)

    # ---- the model protocol ----------------------------------------------------------------

    def objective(self, params: Tensor, batch: Batch,
                  weights: Mapping | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean per-entry NLL over ``batch.loss_mask`` (the masked bins), plus the observation's
        penalty. ``weights`` (LFADS's KL and L2 weights) do not apply to NDT."""
        recon = masked_mean(self.observation.nll(params, batch.target), batch.loss_mask)
        return recon + self.observation.penalty(), {"train_recon": recon}

    def loss(self, batch: Batch, weights: Mapping | None = None, *, noise: Tensor | None = None,
             mask_ratio: float | Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked-modelling loss of a training batch. ``noise`` (B, T) uniforms in [0, 1): bin t of
        trial b is masked where noise < mask_ratio (drawn from torch's global generator when None);
        ``mask_ratio`` defaults to the config's (a tensor under a population's vmap: per member)."""
        B, T = batch.target.shape[:2]
        if noise is None:
            noise = torch.rand(B, T, device=batch.target.device)
        masked = noise < (self.config.mask_ratio if mask_ratio is None else mask_ratio)
        params, _ = self(self._masked_input(batch, masked))
        return self.objective(params, batch._replace(loss_mask=self._counted(batch, masked)))

    def entry_nll(self, batch: Batch) -> Tensor:
        """(B, T, N) NLL of every entry, deterministic: K = round(1 / mask_ratio) passes, pass k masking
        the bins t = k (mod K), and every entry (held-out neurons too) scored in the pass where its bin
        is predicted from its unmasked neighbours."""
        B, T = batch.target.shape[:2]
        K = max(2, round(1 / self.config.mask_ratio))
        phase = torch.arange(T, device=batch.target.device) % K
        nll = None
        for k in range(K):
            masked = (phase == k).expand(B, T)
            params, _ = self(self._masked_input(batch, masked))
            pass_nll = self.observation.nll(params, batch.target)
            nll = pass_nll if nll is None else torch.where(masked[..., None], pass_nll, nll)
        return nll

    def infer_batch(self, batch: Batch, *, sample: bool = False) -> dict[str, Tensor]:
        """Rates from the unmasked input: ``mean`` (B, T, N) and ``latents`` (B, T, d_model), the
        last hidden states. NDT has no posterior, so ``sample`` changes nothing."""
        params, hidden = self(self.session.read_in(encoder_input(batch)))
        return {"mean": self.observation.mean(params), "latents": hidden}

    def check_data(self, ds) -> None:
        """Raise DataError unless the model was built for these data's neurons, held-in neurons and
        trial length, and the data have no external inputs (NDT reads none)."""
        c = self.config
        heldin = heldin_mask(ds)
        if "ext_input" in ds:
            raise DataError("NDT does not read external inputs; drop them with ds.drop_vars('ext_input'), or use "
                            "LFADS (ext_input_dim) for data with inputs.")
        same = self.session.read_in.index.tolist() == np.flatnonzero(heldin).tolist()
        if c.n_neurons != ds.sizes["neuron"] or not same or ds.sizes["time"] > c.n_bins:
            raise DataError(
                f"The NDT was built for {c.n_neurons} neurons ({c.encod_dim} held in) and trials of up to {c.n_bins} "
                f"bins, but the data have {ds.sizes['neuron']} neurons ({int(heldin.sum())} held in) and "
                f"{ds.sizes['time']} bins. Build the model for these data with lfads_nb.build_model(ds, 'ndt', ...).")

    def check_training(self, train_config) -> None:
        """NDT masks whole bins itself; coordinated dropout on top would hide entries twice."""
        if train_config.cd_rate > 0:
            raise ConfigError("NDT masks whole time bins itself (NDTConfig.mask_ratio), so coordinated dropout does "
                              "not apply: set TrainConfig(cd_rate=0).")


__all__ = ["NDT", "NDTConfig", "band_mask"]
