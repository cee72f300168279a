"""Small deterministic numpy quantizers for the GGUF block types that gguf-py (0.19.0) can dequantize but not
quantize: IQ4_NL, IQ4_XS, Q2_K, Q3_K and Q5_K, for the tiny test models of scripts/make-tiny-models.py.

Each is plain round-to-nearest with scales taken from the block's extremes: nothing like llama.cpp's searched
scales, and it need not be, since the engine and llama.cpp are compared on the same bytes. The layouts are ggml's
(ggml/src/ggml-common.h); `check` dequantizes with gguf-py and measures the error against the input.

`quantize(x, kind)` takes float32 rows (the row length a multiple of the block length) and returns the rows' bytes
as a uint8 array of shape (rows, row_bytes), as gguf-py's own `gguf.quants.quantize` does.

Usage as a self-test: python3 scripts/tiny_quants.py
"""

import numpy as np
from gguf import GGMLQuantizationType as T

# ggml's kvalues_iq4nl.
IQ4NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


def _f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    """f16 values as little-endian bytes, one pair per value (shape (..., 2))."""
    return _f16(x).astype("<f2").view(np.uint8).reshape(*np.shape(x), 2)


def _signed_extreme(x: np.ndarray) -> np.ndarray:
    """The value of largest magnitude along the last axis, with its sign."""
    i = np.argmax(np.abs(x), axis=-1)
    return np.take_along_axis(x, i[..., None], axis=-1)[..., 0]


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, and 0 where b is 0."""
    safe = np.where(b == 0, np.float32(1), b)
    return np.where(b == 0, np.float32(0), a / safe).astype(np.float32)


def _nearest_iq4nl(v: np.ndarray) -> np.ndarray:
    """Index of the table value nearest to each v (ties to the lower index)."""
    return np.argmin(np.abs(v[..., None] - IQ4NL_VALUES), axis=-1).astype(np.uint8)


def _pack_nibbles(idx: np.ndarray) -> np.ndarray:
    """32 indices per block (last axis) to 16 bytes: element j in the low nibble of byte j, 16 + j in its high one."""
    return (idx[..., :16] | (idx[..., 16:] << 4)).astype(np.uint8)


def _iq4_nl(x: np.ndarray) -> np.ndarray:
    b = x.reshape(-1, 32)
    # The extreme maps onto the table's -127: d may be negative, as in ggml.
    d = _f16(_signed_extreme(b) / np.float32(-127)).astype(np.float32)
    idx = _nearest_iq4nl(_div(b, d[:, None]))
    return np.concatenate([_f16_bytes(d), _pack_nibbles(idx)], axis=-1)


def _iq4_xs(x: np.ndarray) -> np.ndarray:
    b = x.reshape(-1, 8, 32)
    sub = _signed_extreme(b) / np.float32(-127)  # each sub-block's own scale
    d = _f16(_signed_extreme(sub) / np.float32(-32)).astype(np.float32)
    ls = np.clip(np.rint(_div(sub, d[:, None])), -32, 31).astype(np.int32)
    dl = d[:, None] * ls.astype(np.float32)
    idx = _nearest_iq4nl(_div(b, dl[..., None]))
    u = (ls + 32).astype(np.uint32)
    scales_l = (u[:, 0::2] & 15) | ((u[:, 1::2] & 15) << 4)
    scales_h = np.zeros(len(b), dtype=np.uint32)
    for s in range(8):
        scales_h |= (u[:, s] >> 4) << (2 * s)
    h = scales_h.astype("<u2").view(np.uint8).reshape(-1, 2)
    return np.concatenate([_f16_bytes(d), h, scales_l.astype(np.uint8), _pack_nibbles(idx).reshape(-1, 128)], axis=-1)


def _min_scales(b: np.ndarray, levels: int, scale_max: int):
    """Asymmetric sub-block scales (Q2_K, Q5_K): per sub-block (axis 1) the step and the (non-negative) offset
    as 4- or 6-bit multiples of the block's d and dmin; returns d, dmin, sc, mn and the quants."""
    lo = np.minimum(b.min(axis=-1), 0)
    step = (b.max(axis=-1) - lo) / np.float32(levels)
    d = _f16(step.max(axis=-1) / np.float32(scale_max)).astype(np.float32)
    dmin = _f16(-lo.min(axis=-1) / np.float32(scale_max)).astype(np.float32)
    sc = np.clip(np.rint(_div(step, d[:, None])), 0, scale_max).astype(np.int32)
    mn = np.clip(np.rint(_div(-lo, dmin[:, None])), 0, scale_max).astype(np.int32)
    ds, ms = d[:, None] * sc.astype(np.float32), dmin[:, None] * mn.astype(np.float32)
    q = np.clip(np.rint(_div(b + ms[..., None], ds[..., None])), 0, levels).astype(np.uint32)
    return d, dmin, sc.astype(np.uint32), mn.astype(np.uint32), q


def _crumbs(q: np.ndarray) -> np.ndarray:
    """256 two-bit values (last axis) to 64 bytes: each 128-half's 32 bytes hold its quarter k in bits 2k..2k+2."""
    q = q.reshape(-1, 2, 4, 32) & 3
    out = np.zeros((len(q), 2, 32), dtype=np.uint32)
    for k in range(4):
        out |= q[:, :, k] << (2 * k)
    return out.reshape(-1, 64).astype(np.uint8)


def _q2_k(x: np.ndarray) -> np.ndarray:
    b = x.reshape(-1, 16, 16)
    d, dmin, sc, mn, q = _min_scales(b, 3, 15)
    scales = (sc | (mn << 4)).astype(np.uint8)
    return np.concatenate([scales, _crumbs(q.reshape(-1, 256)), _f16_bytes(d), _f16_bytes(dmin)], axis=-1)


def _q3_k(x: np.ndarray) -> np.ndarray:
    b = x.reshape(-1, 16, 16)
    sub = _signed_extreme(b) / np.float32(-4)  # the extreme onto q - 4 = -4
    d = _f16(_signed_extreme(sub) / np.float32(-32)).astype(np.float32)
    sc = np.clip(np.rint(_div(sub, d[:, None])), -32, 31).astype(np.int32)
    ds = d[:, None] * sc.astype(np.float32)
    q = (np.clip(np.rint(_div(b, ds[..., None])), -4, 3).astype(np.int32) + 4).astype(np.uint32).reshape(-1, 256)
    hmask = np.zeros((len(b), 32), dtype=np.uint32)
    for j in range(8):
        hmask |= ((q[:, 32 * j:32 * j + 32] >> 2) & 1) << j
    u = (sc + 32).astype(np.uint32)
    scales = np.zeros((len(b), 12), dtype=np.uint32)
    scales[:, 0:8] = (u[:, 0:8] & 15) | ((u[:, 8:16] & 15) << 4)
    for j in range(16):
        scales[:, 8 + j % 4] |= (u[:, j] >> 4) << (2 * (j // 4))
    return np.concatenate([hmask.astype(np.uint8), _crumbs(q), scales.astype(np.uint8), _f16_bytes(d)], axis=-1)


def _q5_k(x: np.ndarray) -> np.ndarray:
    b = x.reshape(-1, 8, 32)
    d, dmin, sc, mn, q = _min_scales(b, 31, 63)
    # The 6-bit scales and mins, packed as ggml's get_scale_min_k4 unpacks them.
    s = np.zeros((len(b), 12), dtype=np.uint32)
    s[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 15) | ((mn[:, 4:8] & 15) << 4)
    q = q.reshape(-1, 256)
    qh = np.zeros((len(b), 32), dtype=np.uint32)
    for g in range(8):
        qh |= ((q[:, 32 * g:32 * g + 32] >> 4) & 1) << g
    # Chunk c of 64 values: 32 bytes, the first 32 values in the low nibbles, the next 32 in the high ones.
    lo = (q & 15).reshape(-1, 4, 2, 32)
    qs = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), s.astype(np.uint8), qh.astype(np.uint8),
                           qs.astype(np.uint8)], axis=-1)


QUANTIZERS = {T.IQ4_NL: (32, 18, _iq4_nl), T.IQ4_XS: (256, 136, _iq4_xs), T.Q2_K: (256, 84, _q2_k),
              T.Q3_K: (256, 110, _q3_k), T.Q5_K: (256, 176, _q5_k)}


def quantize(x: np.ndarray, kind: T) -> np.ndarray:
    """The rows of `x` (float32, each a multiple of the block length) in `kind`'s blocks: (rows, row_bytes) uint8."""
    block, nbytes, f = QUANTIZERS[kind]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    assert cols % block == 0, f"{kind.name}: rows of {cols} are not whole blocks of {block}"
    out = f(x.reshape(-1))
    assert out.shape == (rows * cols // block, nbytes), (kind.name, out.shape)
    return out.reshape(rows, cols // block * nbytes)


def check(x: np.ndarray, kind: T) -> float:
    """Quantizes `x`, dequantizes with gguf-py, and returns the RMS error relative to the RMS of `x`."""
    import gguf
    y = gguf.quants.dequantize(quantize(x, kind), kind).reshape(x.shape)
    return float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2)))


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 512), dtype=np.float32) * np.float32(0.1)
    x[3, 40] = 2.0  # an outlier
    x[5, :256] = 0.0  # an all-zero block
    # Round-to-nearest on normal data: about these relative RMS errors (IQ4 at ~4.5 bits, Q2_K at ~2.6).
    limits = {T.IQ4_NL: 0.12, T.IQ4_XS: 0.12, T.Q2_K: 0.5, T.Q3_K: 0.3, T.Q5_K: 0.05}
    for kind, limit in limits.items():
        err = check(x, kind)
        print(f"{kind.name}: relative RMS error {err:.4f} (limit {limit})")
        assert err < limit, kind.name
