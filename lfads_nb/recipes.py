"""Recipes: model sizes and training settings known to work for a task, kept in one place so the
tutorials that share a task train the same way (and a change is measured once, here).

``chaotic_rnn_training``: LFADS with a controller on a few hundred trials of chaotic-RNN spikes
(``data_generators.chaotic_rnn``) in about 100 epochs, the schedule tutorial 02 teaches and
tutorial 10 trains its LFADS baseline by: Adam from a high learning rate (1e-2) that shrinks fast
(x0.8 after every 2 epochs without a better smoothed validation loss), so the large early steps
find the dynamics and the small late ones settle them within the budget. ``TrainConfig()``'s own
schedule (4e-3, x0.95 after 6 epochs) is a slower, general start for longer runs (lfads-torch's
defaults), and is what tutorial 04's untuned baseline uses, with its learning rate held constant.

``attractor_model`` / ``attractor_training``: LFADS without a controller on spikes read out from a
low-dimensional chaotic attractor (``data_generators.attractor``), the task of Sedler, Versteeg &
Pandarinath 2023, used by tutorials 08 (GRU vs neural-ODE generators, state R^2) and 09 (fixed
points). The parts, and why (measured here on Lorenz, NODE-3, 1000 trials, one CPU thread):

- **small batches at a constant learning rate** (batch 50, Adam 2e-3, no decay). The paper takes
  one whole-batch step per epoch (lr 5e-3); an epoch costs the same CPU either way (trials x
  bins), and 16 small steps learn far more per epoch: state R^2 0.78 / 0.90 / 0.91 (seeds 2 / 1 /
  0) after 300 epochs, against 0.61 / 0.70 at seeds 2 / 1 after 500 whole-batch epochs;
- **a sequence-length curriculum** (``TrainConfig.curriculum_bins``): the training steps see only
  the first bins of each trial, 5 more every 40 epochs (whole 70-bin trials from epoch 520), so
  the field learns the local flow before errors compound over a whole trial, and short trials are
  cheap (state R^2 0.78 in 52 CPU s, against 0.42 in 100 s when the curriculum only masks the
  loss, both with whole-batch steps). A slow curriculum matters most where a trial is long in the
  system's time: a Rossler trial spans two periods, and NODE-3 reached state R^2 0.88 after 700
  epochs with 40 epochs per step, against 0.35 after 600 with 12 (seed 0); on Lorenz, seed 2,
  0.886 after 800 epochs in 167 CPU s with 40, against 0.855 in 220 s with 12. (The paper: 150
  epochs of two whole-batch steps each. These runs read out the z-scored state, before the
  generator read out the raw state as the paper does.);
- **log counts at the encoders** (``LFADSConfig.log1p_encoder_input``): the encoders read
  log(1 + counts), the likelihood scores the counts. Rates that are exp of a z-scored activity
  reach hundreds or thousands of counts in a bin where a neuron weighs a rare excursion heavily
  (Rossler's z at seeds 1 and 3: 1987 and 1273 counts), and raw counts that large saturate the
  encoders' gates. NODE-3 alone, 800 epochs, without / with: Rossler seed 1 0.31 / 0.80 (0.86
  after 1500 epochs), seed 3 0.945 / 0.960; Lorenz seed 1 0.77 / 0.92, seed 2 0.888 / 0.905,
  seed 0 0.955 / 0.933;
- **a narrow initial IC posterior** (``LFADSConfig.ic_post_var_init``): with the default unit
  variance the sampled initial conditions spread over the whole attractor, which rewards a field
  that contracts every start to the mean (rate R^2 0.71 against 0.52);
- **stop on a flat curve** (``TrainConfig.early_stop_min_delta``): a run ends once 100 epochs have
  improved its best validation NLL by at most 5e-4 nats per entry, so a model that has learned
  what it can (a large GRU, within a few hundred epochs) frees its CPU for one still learning
  (the NODE, for a thousand epochs and more).

The vector field's initial scale is the default: shrinking its output weights 5x (a slower
initial flow, nearer the paper's) did not help (state R^2 0.81 against 0.83, seed 2, 600 epochs).
"""
from __future__ import annotations

CHAOTIC_RNN_TRAINING = dict(max_epochs=100, batch_size=32, lr=1e-2, lr_decay=0.8, lr_patience=2, cd_rate=0.3)
"""``TrainConfig`` settings of tutorial 02's schedule (``chaotic_rnn_training``)."""


def chaotic_rnn_training(**overrides):
    """The ``TrainConfig`` of tutorial 02's schedule (``CHAOTIC_RNN_TRAINING``), ``overrides``
    replacing any field (``seed``, ``device``, ...)."""
    import lfads_nb

    return lfads_nb.TrainConfig(**{**CHAOTIC_RNN_TRAINING, **overrides})


ATTRACTOR_SIZES = dict(co_dim=0, ic_enc_dim=32, dropout=0.0, ic_post_var_init=0.018, log1p_encoder_input=True)
"""``build_model`` sizes shared by every attractor model; the state, the IC and the factors are
each as wide as the model's dimension (``attractor_model``)."""

ATTRACTOR_TRAINING = dict(batch_size=50, lr=2e-3, lr_decay=1.0, cd_rate=0.0, kl_ramp_epochs=10, l2_ramp_epochs=10,
                          curriculum_bins=5, curriculum_epochs=40, max_epochs=1000, early_stop_patience=100,
                          early_stop_min_delta=5e-4)
"""``TrainConfig`` settings of the attractor recipe: small batches at a constant learning rate, the
curriculum, and a stop once the validation curve has flattened."""


def attractor_model(ds, generator: str = "node", dim: int = 3, *, seed: int | None = None, **overrides):
    """An LFADS for attractor spikes ``ds`` by the recipe: no controller, a ``generator`` ("node"
    or "gru") with a ``dim``-D state, IC and factors, ``ATTRACTOR_SIZES``; ``overrides`` are
    further ``build_model`` sizes (e.g. ``node_solver="rk4"``)."""
    import lfads_nb

    sizes = {**ATTRACTOR_SIZES, "generator": generator, "gen_dim": dim, "ic_dim": dim, "fac_dim": dim, **overrides}
    return lfads_nb.build_model(ds, seed=seed, **sizes)


def attractor_training(**overrides):
    """The recipe's ``TrainConfig`` (``ATTRACTOR_TRAINING``), ``overrides`` replacing any field
    (``max_epochs``, ``seed``, ``device``, ...)."""
    import lfads_nb

    return lfads_nb.TrainConfig(**{**ATTRACTOR_TRAINING, **overrides})
