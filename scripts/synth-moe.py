#!/usr/bin/env python3
"""Writes a random-weight `qwen3moe` GGUF model for speed tests (never for correctness): Qwen3-30B-A3B's
proportions (128 experts of which 8 run per token, each expert 768 wide, 4 KV heads, per-head q/k norms), with fewer
and narrower layers so that it fits this machine.

The matrices are Q8_0 blocks of random 8-bit values with one small scale (about N(0, 0.02) weights), written
directly as bytes (no quantization pass), so that a file of a few GB takes seconds. The tokenizer is the donor's.

Usage: python3 scripts/synth-moe.py DONOR.gguf OUT.gguf [--layers 12] [--hidden 1024] [--experts 128] [--used 8]
                                    [--expert-ffn 768] [--heads 16] [--kv-heads 4] [--head-dim 64]
"""

import argparse
import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

BLOCK = 32
BLOCK_BYTES = 34


def q8_0(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random Q8_0 rows of `shape` (the last dimension counts values): each block's f16 scale, then 32 int8."""
    *lead, cols = shape
    blocks = int(np.prod(lead)) * (cols // BLOCK)
    out = np.empty((blocks, BLOCK_BYTES), dtype=np.uint8)
    out[:, :2] = np.frombuffer(np.float16(0.02 / 73.0).tobytes(), dtype=np.uint8)
    out[:, 2:] = rng.integers(-127, 128, size=(blocks, BLOCK), dtype=np.int8).view(np.uint8)
    return out.reshape(*lead, cols // BLOCK * BLOCK_BYTES)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("donor")
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--used", type=int, default=8)
    p.add_argument("--expert-ffn", type=int, default=768)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)

    reader = gguf.GGUFReader(a.donor)
    w = gguf.GGUFWriter(a.out, "qwen3moe")
    w.add_name(os.path.splitext(os.path.basename(a.out))[0])
    vocab = 0
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            sub_type = field.types[1] if len(field.types) > 1 else None
            w.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
            if name == "tokenizer.ggml.tokens":
                vocab = len(field.contents())
    h, hd = a.hidden, a.head_dim
    w.add_block_count(a.layers)
    w.add_context_length(4096)
    w.add_embedding_length(h)
    w.add_feed_forward_length(a.expert_ffn * a.used)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_count(a.experts)
    w.add_expert_used_count(a.used)
    w.add_expert_feed_forward_length(a.expert_ffn)

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", q8_0(rng, (vocab, h)), raw_dtype=T.Q8_0)
    for i in range(a.layers):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", ones(h))
        w.add_tensor(b + "attn_q.weight", q8_0(rng, (a.heads * hd, h)), raw_dtype=T.Q8_0)
        w.add_tensor(b + "attn_k.weight", q8_0(rng, (a.kv_heads * hd, h)), raw_dtype=T.Q8_0)
        w.add_tensor(b + "attn_v.weight", q8_0(rng, (a.kv_heads * hd, h)), raw_dtype=T.Q8_0)
        w.add_tensor(b + "attn_q_norm.weight", ones(hd))
        w.add_tensor(b + "attn_k_norm.weight", ones(hd))
        w.add_tensor(b + "attn_output.weight", q8_0(rng, (h, a.heads * hd)), raw_dtype=T.Q8_0)
        w.add_tensor(b + "ffn_norm.weight", ones(h))
        w.add_tensor(b + "ffn_gate_inp.weight", rng.standard_normal((a.experts, h), dtype=np.float32))
        w.add_tensor(b + "ffn_gate_exps.weight", q8_0(rng, (a.experts, a.expert_ffn, h)), raw_dtype=T.Q8_0)
        w.add_tensor(b + "ffn_up_exps.weight", q8_0(rng, (a.experts, a.expert_ffn, h)), raw_dtype=T.Q8_0)
        w.add_tensor(b + "ffn_down_exps.weight", q8_0(rng, (a.experts, h, a.expert_ffn)), raw_dtype=T.Q8_0)
    w.add_tensor("output_norm.weight", ones(h))
    w.add_tensor("output.weight", q8_0(rng, (vocab, h)), raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
