"""Dimension glossary and tensor aliases shared by every model in this package.

Dimensions (used in docstrings and shape comments):
    b   batch (users)
    t   time (events); ``L`` is the padded sequence length
    d   model width (``d_model``)
    n   recurrent channels per layer (``d_state``; complex for LRURec, real for RecBLR)
    v   vocabulary: ``n_items + 1`` because index 0 is padding
    k   layers (``n_layers``)

Paper notation (LRURec, Yue et al. 2024; RecBLR, Liu et al. 2024):
    λ  ``decay``: per-channel complex decay exp(-ν + iθ); ``nu_log``, ``theta_log`` are log ν, log θ
    γ  ``gamma``: input normalisation sqrt(1 - |λ|²), stored as ``gamma_log``
    B  input projection d → n (complex: real/imag pairs ``B_re``/``B_im``, bias ``b_re``/``b_im``)
    C  output projection n → d (complex; only Re(C h + c) is used, so ``C_re``/``C_im``, ``c_re``)
    h  recurrent state; u = γ ⊙ (B x + b) is the scan input
    α, β  RecBLR's input-dependent decay and input gates
"""

from typing import TypeAlias

from torch import Tensor

Items: TypeAlias = Tensor
"""Integer item indices, ``LongTensor[b, t]`` (left-padded with 0) or ``LongTensor[b]``."""

Hidden: TypeAlias = Tensor
"""Output of the last block, ``Tensor[b, t, d]`` or ``Tensor[b, d]``."""

State: TypeAlias = Tensor
"""Per-user serving state: a real float32 ``Tensor[b, *model.state_shape]``."""

Scores: TypeAlias = Tensor
"""Unnormalised item scores, ``Tensor[..., v]``; column 0 is padding."""
