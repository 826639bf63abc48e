"""Scale formats and memory layouts: one function per layout and its inverse.

Kernels disagree on how activation and weight scales sit in memory. Every layout a kernel takes is written here
once, with the inverse that tests use to prove it against ``quant.reference``:

* ``row_major``    float32 ``[M, G]`` contiguous (reference, Triton);
* ``mn_major``     float32 ``[(E,) MN, G]`` with strides ``(1, align(MN, 4))``: MN-major and TMA-aligned (torch
  ``scaled_mm``'s activation scales, DeepGEMM on SM90);
* ``packed_ue8m0`` int32 ``[(E,) MN, ceil(G/4)]``, MN-major and TMA-aligned, 4 exponent bytes per word along K,
  byte ``g % 4`` little-endian (DeepGEMM on SM100/SM103);
* per-row packed weight scales: DeepGEMM on SM100 takes one scale per weight *row* and 128-K group, so the
  ``128 x 128`` block scales are broadcast to every row of their block and then packed.
"""

from __future__ import annotations

import enum

import torch

from blockfp8.quant.reference import QuantError, cdiv, e8m0_to_float32, ue8m0_exponent


class ScaleFmt(str, enum.Enum):
    FLOAT32 = "float32"
    UE8M0 = "ue8m0"

    def __str__(self) -> str:
        return self.value


class ScaleLayout(str, enum.Enum):
    """How activation (or weight) scales are laid out in memory for a kernel."""

    ROW_MAJOR = "row_major"  # [M, G] contiguous (reference, Triton)
    MN_MAJOR = "mn_major"  # [M, G] with strides (1, align(M, 4)): scaled_mm, DeepGEMM SM90
    PACKED_UE8M0 = "packed_ue8m0"  # int32 words of 4 exponent bytes, MN-major, TMA-aligned: DeepGEMM SM100

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | ScaleLayout) -> ScaleLayout:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(v.value for v in cls)
            raise QuantError(f"layout={value!r} is not valid; valid values: {valid}") from None


def tma_aligned(mn: int, elem_bytes: int = 4) -> int:
    """TMA wants 16-byte aligned MN strides: for 4-byte elements, MN padded to a multiple of 4."""
    align = 16 // elem_bytes
    return cdiv(mn, align) * align


def _check_2d_or_3d(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise QuantError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in (2, 3):
        raise QuantError(f"{name}: expected a 2-D [MN, G] or 3-D [E, MN, G] tensor, got shape {tuple(t.shape)}")


# ------------------------------------------------------------------------------------------------ mn_major


def to_mn_major(scale: torch.Tensor) -> torch.Tensor:
    """float32 ``[(E,) MN, G]`` -> the same values, MN-major, with MN padded to a multiple of 4 in storage."""
    _check_2d_or_3d(scale, "scale")
    squeeze = scale.dim() == 2
    s = scale.unsqueeze(0) if squeeze else scale
    b, mn, g = s.shape
    storage = torch.zeros((b, g, tma_aligned(mn)), dtype=torch.float32, device=s.device)
    storage[:, :, :mn] = s.transpose(1, 2).to(torch.float32)
    out = storage.transpose(1, 2)[:, :mn, :]
    return out[0] if squeeze else out


def from_mn_major(scale: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_mn_major`: the same values, row-major contiguous."""
    _check_2d_or_3d(scale, "scale")
    return scale.contiguous()


# ------------------------------------------------------------------------------------------------ packed_ue8m0


def pack_ue8m0(scale: torch.Tensor) -> torch.Tensor:
    """Pack power-of-two float32 scales ``[(E,) MN, G]`` into int32 words, 4 exponent bytes per word along G.

    Byte ``g % 4`` of word ``g // 4`` holds group g (little-endian); missing groups are 0. The result is
    MN-major and TMA-aligned: shape ``[(E,) MN, ceil(G/4)]`` with strides ``(1, align(MN, 4))`` (per expert),
    the layout DeepGEMM takes on SM100.
    """
    _check_2d_or_3d(scale, "scale")
    squeeze = scale.dim() == 2
    s = scale.unsqueeze(0) if squeeze else scale
    b, mn, g = s.shape
    words, mn_pad = cdiv(g, 4), tma_aligned(mn)
    ex = torch.zeros((b, mn, words * 4), dtype=torch.int64, device=s.device)
    ex[:, :, :g] = ue8m0_exponent(s).to(torch.int64)
    ex = ex.view(b, mn, words, 4)
    word = ex[..., 0] | (ex[..., 1] << 8) | (ex[..., 2] << 16) | (ex[..., 3] << 24)
    word = torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)  # reinterpret as signed int32
    storage = torch.zeros((b, words, mn_pad), dtype=torch.int32, device=s.device)
    storage[:, :, :mn] = word.transpose(1, 2)
    packed = storage.transpose(1, 2)[:, :mn, :]
    return packed[0] if squeeze else packed


def unpack_ue8m0(packed: torch.Tensor, k_groups: int) -> torch.Tensor:
    """Inverse of pack_ue8m0: int32 words ``[(E,) MN, ceil(G/4)]`` -> float32 scales ``[(E,) MN, k_groups]``."""
    _check_2d_or_3d(packed, "packed")
    if isinstance(k_groups, bool) or not isinstance(k_groups, int) or k_groups <= 0:
        raise QuantError(f"k_groups={k_groups!r} must be a positive integer")
    if packed.dtype != torch.int32:
        raise QuantError(f"packed: expected int32 words, got dtype {packed.dtype}")
    if packed.shape[-1] != cdiv(k_groups, 4):
        raise QuantError(
            f"packed: {packed.shape[-1]} words per row cannot hold k_groups={k_groups} (need {cdiv(k_groups, 4)})"
        )
    w = packed.to(torch.int64) & 0xFFFFFFFF
    b = torch.stack([(w >> (8 * i)) & 0xFF for i in range(4)], dim=-1)
    b = b.reshape(*packed.shape[:-1], -1)[..., :k_groups]
    return e8m0_to_float32(b.to(torch.uint8))


# ------------------------------------------------------------------------------------------------ per-row weights


def pack_ue8m0_per_row(block_scale: torch.Tensor, n: int, block_n: int = 128) -> torch.Tensor:
    """Power-of-two block scales ``[(E,) ceil(N/bn), G]`` -> one packed scale per weight row,
    ``[(E,) N, ceil(G/4)]`` int32 (each block's exponent repeated on its ``block_n`` rows)."""
    _check_2d_or_3d(block_scale, "weight scale")
    rows = block_scale.repeat_interleave(block_n, dim=-2)[..., :n, :]
    return pack_ue8m0(rows.contiguous())


def unpack_ue8m0_per_row(packed: torch.Tensor, k_groups: int, block_n: int = 128) -> torch.Tensor:
    """Inverse of :func:`pack_ue8m0_per_row`: ``[(E,) ceil(N/bn), G]`` float32; checks that every row of a block
    holds the same scales."""
    rows = unpack_ue8m0(packed, k_groups)
    n = rows.shape[-2]
    blocks = rows[..., ::block_n, :]
    if not torch.equal(blocks.repeat_interleave(block_n, dim=-2)[..., :n, :], rows):
        raise QuantError("packed weight scales: rows of one block disagree")
    return blocks


# ------------------------------------------------------------------------------------------------ any layout


def to_layout(scale: torch.Tensor, layout: ScaleLayout | str) -> torch.Tensor:
    """Row-major float32 scales ``[(E,) MN, G]`` in ``layout`` (packed UE8M0 needs power-of-two scales)."""
    layout = ScaleLayout.parse(layout)
    if layout is ScaleLayout.ROW_MAJOR:
        return scale
    if layout is ScaleLayout.MN_MAJOR:
        return to_mn_major(scale)
    return pack_ue8m0(scale)


def from_layout(scale: torch.Tensor, layout: ScaleLayout | str, k_groups: int) -> torch.Tensor:
    """Inverse of :func:`to_layout`: float32 ``[(E,) MN, k_groups]``, row-major contiguous."""
    layout = ScaleLayout.parse(layout)
    if layout is ScaleLayout.PACKED_UE8M0:
        return unpack_ue8m0(scale, k_groups)
    return from_mn_major(scale) if layout is ScaleLayout.MN_MAJOR else scale.contiguous()


def empty_scales(m_rows: int, groups: int, layout: ScaleLayout | str, device) -> torch.Tensor:
    """An uninitialised scale tensor of logical shape ``[m_rows, groups]`` (``ceil(groups/4)`` int32 words when
    packed) in ``layout``: what a quantizer kernel writes into."""
    layout = ScaleLayout.parse(layout)
    if layout is ScaleLayout.ROW_MAJOR:
        return torch.empty((m_rows, groups), dtype=torch.float32, device=device)
    mn_pad = tma_aligned(m_rows)
    if layout is ScaleLayout.MN_MAJOR:
        return torch.empty((groups, mn_pad), dtype=torch.float32, device=device).t()[:m_rows]
    return torch.empty((cdiv(groups, 4), mn_pad), dtype=torch.int32, device=device).t()[:m_rows]
