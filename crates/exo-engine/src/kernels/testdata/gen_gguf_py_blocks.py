# Regenerates gguf_py_blocks.bin (`python3 gen_gguf_py_blocks.py`, needs gguf-py: `pip install gguf==0.19.0 numpy`):
# random GGUF blocks and gguf-py's dequantized values; per type: u32 type id, u32 block count, raw block bytes,
# f32 LE values. New types go at the end, so that the blocks of the earlier ones stay as they were.
import os, struct

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
rng = np.random.default_rng(1234)
# (id in the fixture, type, block bytes, offsets of the f16 scale fields; None for BF16, "e8m0" for MXFP4's
# exponent byte).
types = [
    (0, T.Q4_0, 18, [0]),
    (1, T.Q4_1, 20, [0, 2]),
    (2, T.Q8_0, 34, [0]),
    (3, T.Q4_K, 144, [0, 2]),
    (4, T.Q6_K, 210, [208]),
    (5, T.Q5_0, 22, [0]),
    (6, T.Q5_1, 24, [0, 2]),
    (7, T.Q2_K, 84, [80, 82]),
    (8, T.Q3_K, 110, [108]),
    (9, T.Q5_K, 176, [0, 2]),
    (10, T.BF16, 2, None),
    (11, T.IQ4_NL, 18, [0]),
    (12, T.IQ4_XS, 136, [0]),
    (13, T.MXFP4, 17, "e8m0"),
]
out = b""
for tid, t, bb, f16_at in types:
    if f16_at is None:
        # BF16 (one value a block): the top halves of realistic random weights.
        nb = 64
        top = (rng.normal(0.0, 0.05, nb).astype("<f4").view("<u4") >> 16).astype("<u2")
        raw = top.view(np.uint8).reshape(nb, bb)
    elif f16_at == "e8m0":
        # Realistic exponents (scales 2^-10..2^-3), and the two subnormal scales e = 0 and 1.
        nb = 4
        raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
        raw[:, 0] = [int(rng.integers(118, 126)), int(rng.integers(118, 126)), 0, 1]
    else:
        nb = 3
        raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
        for b in range(nb):
            for at in f16_at:
                # A negative min (the m field of Q4_1/Q5_1) in the second block.
                sign = -1.0 if (at == 2 and t in (T.Q4_1, T.Q5_1) and b == 1) else 1.0
                d = np.float16(sign * 10 ** rng.uniform(-3, -1))
                raw[b, at:at + 2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
    vals = gguf.quants.dequantize(raw.reshape(-1), t).astype("<f4").reshape(-1)
    out += struct.pack("<II", tid, nb) + raw.tobytes() + vals.tobytes()
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gguf_py_blocks.bin"), "wb").write(out)
print(len(out))
