# Regenerates gguf_py_blocks.bin (`python3 gen_gguf_py_blocks.py`, needs gguf-py): random GGUF blocks and
# gguf-py's dequantized values; per type: u32 type id, u32 block count, raw block bytes, f32 LE values.
import os, struct

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
rng = np.random.default_rng(1234)
types = [(0, T.Q4_0, 18, [0]), (1, T.Q4_1, 20, [0, 2]), (2, T.Q8_0, 34, [0]), (3, T.Q4_K, 144, [0, 2]), (4, T.Q6_K, 210, [208])]
out = b""
for tid, t, bb, f16_at in types:
    nb = 3
    raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    for b in range(nb):
        for at in f16_at:
            sign = -1.0 if (at == 2 and t == T.Q4_1 and b == 1) else 1.0
            d = np.float16(sign * 10 ** rng.uniform(-3, -1))
            raw[b, at:at + 2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
    vals = gguf.quants.dequantize(raw.reshape(-1), t).astype("<f4").reshape(-1)
    out += struct.pack("<II", tid, nb) + raw.tobytes() + vals.tobytes()
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gguf_py_blocks.bin"), "wb").write(out)
print(len(out))
