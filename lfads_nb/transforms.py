"""A batch of trials, and the pure functions that decide what the encoder sees and what the loss counts.

lfads-torch applies its augmentations through two hooks, one before the forward pass and one on
the loss, and keeps the masks inside the augmentation objects in between. Here the masks travel
in the ``Batch`` itself, so every transform is a plain function ``batch -> batch`` with its
randomness passed in, and the same functions serve one model and a population (a rate may be a
per-member tensor of shape (P, 1, 1, 1); the masks then gain a leading member axis).

Order (each one documented below):

- training: ``forward_prediction`` -> ``sbtt`` -> ``sample_validation`` -> ``temporal_shift`` ->
  ``coordinated_dropout``
- validation and inference: ``forward_prediction`` -> ``sbtt`` -> ``sample_validation``

``temporal_shift`` moves values together with their masks, so it comes after the masks that are
fixed per (trial, bin, channel) entry (``sbtt``'s unobserved entries, ``sample_validation``'s
held-out ones): a held-out value stays hidden and out of the loss wherever the shift moves it.

Then ``encoder_input(batch)`` is what the encoder reads and ``batch.loss_mask`` what the
reconstruction loss averages over.

Shapes: B trials, T bins, N channels (neurons).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .errors import ConfigError


class Batch(NamedTuple):
    """One batch of trials: data, what the encoder may see, what the loss counts."""

    encoder_data: Tensor  # (B, T, N) values the encoder input is made of (NaN = not observed until sbtt)
    target: Tensor  # (B, T, N) values the loss reconstructs (NaN = not observed until sbtt)
    ext: Tensor | None  # (B, T, ext_input_dim) external inputs, or None
    encoder_mask: Tensor  # bool (..., B, T, N): entries shown to the encoder
    encoder_scale: Tensor | float  # 1 / P(an entry is shown): shown entries are rescaled by it
    loss_mask: Tensor  # bool (..., B, T, N): entries the reconstruction loss counts
    heldout: Tensor  # bool (B, T, N): entries held out by sample validation, scored on validation trials
    heldin: Tensor  # bool (N,): channels the encoder reads (the rest are held out for co-bps)


def make_batch(data: Tensor, heldin: Tensor, ext: Tensor | None = None) -> Batch:
    """A batch that shows the encoder every entry and counts every entry in the loss.

    data (B, T, N) as recorded (NaN = not observed; apply ``sbtt`` before training on it),
    heldin (N,) bool, ext (B, T, ext_input_dim) or None.
    """
    everything = torch.ones(data.shape, dtype=torch.bool, device=data.device)
    return Batch(data, data, ext, everything, 1.0, everything, torch.zeros_like(everything), heldin)


def forward_prediction(batch: Batch, encoder_bins: Tensor) -> Batch:
    """Forward prediction (NLB, lfads-torch's ``recon_seq_len > encod_seq_len``): the encoder sees
    only the first bins of a trial, the reconstruction covers all of them, so the rates of the last
    bins come from the model's dynamics alone.

    ``encoder_bins`` (T,) bool, True for the bins the encoder sees (``data.encoder_bins``: False
    for the bins the ``forward`` coordinate marks). Hidden bins are zero at the encoder and stay
    in the loss. lfads-torch runs its encoders on the first bins only and gives the controller
    zero input after them; here the encoders run over the whole trial with the forward bins
    zeroed, so no forward-bin data reaches the model either way.
    """
    return batch._replace(encoder_mask=batch.encoder_mask & encoder_bins[:, None])


def sbtt(batch: Batch) -> Batch:
    """Selective backpropagation through time (Zhu, Sedler et al. 2021): NaN means not observed.

    An unobserved entry is zero at the encoder and out of the loss, and the loss is the mean
    over the observed entries only, so a bin where only some channels were sampled still
    trains on those (``objective`` divides by the number of counted entries). Unobserved
    entries are not rescaled at the encoder: which entries are missing is a property of the
    recording, not a random draw to correct for.
    """
    def observed(values: Tensor) -> tuple[Tensor, Tensor]:  # where values are not NaN, and NaN as 0
        return values == values, values.nan_to_num(0.0)

    seen_enc, encoder_data = observed(batch.encoder_data)
    # make_batch passes the recording as both: one pass over it, not two
    seen_target, target = (seen_enc, encoder_data) if batch.target is batch.encoder_data else observed(batch.target)
    return batch._replace(
        encoder_data=encoder_data,
        target=target,
        encoder_mask=batch.encoder_mask & seen_enc,
        loss_mask=batch.loss_mask & seen_target,
        heldout=batch.heldout & seen_target,
    )


def sample_validation(batch: Batch, keep: Tensor, fraction: float) -> Batch:
    """Sample validation: a fixed fraction of entries held out in every trial and split.

    ``keep`` (B, T, N) bool, False for the held-out entries (one seeded mask per trial, made
    once: ``training.loop._sv_keep_mask``); ``fraction`` the held-out share. Held-out entries are
    hidden from the encoder (the rest rescaled by 1 / (1 - fraction)), never trained on, and
    marked in ``heldout`` so validation can score them: a model that copies its input to its
    output cannot predict them.
    """
    if fraction == 0:
        return batch
    return batch._replace(
        encoder_mask=batch.encoder_mask & keep,
        encoder_scale=batch.encoder_scale / (1.0 - fraction),
        loss_mask=batch.loss_mask & keep,
        heldout=batch.loss_mask & ~keep,
    )


def coordinated_dropout(batch: Batch, rate: float | Tensor, uniforms: Tensor) -> Batch:
    """Coordinated dropout (Keshtkaran & Pandarinath 2019): hide a random set of entries from the
    encoder and count only those in the loss, so the model cannot learn to copy its input.

    ``rate``: the hidden fraction, a number or a per-member tensor (P, 1, 1, 1); ``uniforms``
    (B, T, N) or (P, B, T, N) in [0, 1): an entry is shown where uniform >= rate. Shown entries
    are rescaled by 1 / (1 - rate). The loss counts what the encoder did not see: held-in
    channels only where hidden, held-out channels and forward-prediction bins (never shown)
    always. With rate 0 nothing changes.
    """
    shown = uniforms >= rate
    counted = ~(shown & batch.encoder_mask) | ~batch.heldin | (rate == 0)
    return batch._replace(
        encoder_mask=batch.encoder_mask & shown,
        encoder_scale=batch.encoder_scale / (1.0 - rate),
        loss_mask=batch.loss_mask & counted,
    )


def rounded_normal_shifts(normals: Tensor, std: float | Tensor, max_shift: int) -> Tensor:
    """Integer shifts in bins: round(std * normals), clamped to [-max_shift, max_shift].

    ``normals``: standard normal draws, any shape (e.g. (2, B, N): one set for the encoder input,
    one for the target; or (2, P, B, N) for a population); ``std`` in bins, a number or a tensor
    broadcasting against ``normals`` (per member: (P, 1, 1)). Returns a long tensor like ``normals``.
    """
    return torch.round(normals * std).clamp(-max_shift, max_shift).long()


def _shift_time(values: Tensor, shifts: Tensor, fill) -> Tensor:
    """``out[..., b, t, n] = values[..., b, t - shifts[..., b, n], n]``, ``fill`` where t - shift
    falls outside the trial. values (B, T, N) or (P, B, T, N); shifts (B, N) or (P, B, N)."""
    T = values.shape[-2]
    source = torch.arange(T, device=values.device).view(T, 1) - shifts.unsqueeze(-2)  # (..., B, T, N)
    shape = torch.broadcast_shapes(values.shape, source.shape)
    source, values = source.expand(shape), values.expand(shape)
    moved = values.gather(-2, source.clamp(0, T - 1))
    return torch.where((source >= 0) & (source < T), moved, fill)


def temporal_shift(batch: Batch, encoder_shifts: Tensor, target_shifts: Tensor) -> Batch:
    """Temporal shift (Wimalasena et al. 2022; lfads-torch ``TemporalShift``): move each channel of
    each trial in time by its own whole number of bins, independently for the encoder input and
    for the reconstruction target, so an artifact that hits many channels in the same bin no
    longer looks like a shared event; the model has to rely on slower, robust correlations.

    ``encoder_shifts``, ``target_shifts``: integer bins per (trial, channel), (B, N), or per member
    (P, B, N) (the data then gain a leading member axis); a positive shift delays the channel:
    output bin t holds input bin t - shift (``rounded_normal_shifts`` draws them). Masks move
    with their values. Edges: bins whose source lies outside the trial are not observed (hidden
    from the encoder, out of the loss), so no value is invented there (lfads-torch repeats the
    edge value instead) and the trial keeps its length. Training only: validation and
    inference see the data as recorded.
    """
    B, _, N = batch.target.shape[-3:]
    if encoder_shifts.shape != target_shifts.shape or encoder_shifts.shape[-2:] != (B, N):
        raise ConfigError(f"temporal_shift needs encoder and target shifts of one shape (..., B, N) = (..., {B}, {N}); "
                          f"got {tuple(encoder_shifts.shape)} and {tuple(target_shifts.shape)}.")

    return batch._replace(
        encoder_data=_shift_time(batch.encoder_data, encoder_shifts, 0.0),
        encoder_mask=_shift_time(batch.encoder_mask, encoder_shifts, False),
        target=_shift_time(batch.target, target_shifts, 0.0),
        loss_mask=_shift_time(batch.loss_mask, target_shifts, False),
        heldout=_shift_time(batch.heldout, target_shifts, False),
    )


def encoder_input(batch: Batch) -> Tensor:
    """What the encoder may read: (..., B, T, N), shown entries rescaled, the rest 0. The model's
    read-in then picks its channels (``LFADS.session.read_in``: the held-in ones)."""
    return batch.encoder_data * batch.encoder_mask * batch.encoder_scale


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the entries where ``mask`` is True (0 when there are none)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


__all__ = ["Batch", "coordinated_dropout", "encoder_input", "forward_prediction", "make_batch", "masked_mean",
           "rounded_normal_shifts", "sample_validation", "sbtt", "temporal_shift"]
