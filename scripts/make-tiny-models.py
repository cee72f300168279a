#!/usr/bin/env python3
"""Writes two tiny random-weight GGUF models, the same bytes on every run, for checking the engine's `qwen2` and
Llama 3 code paths against llama.cpp (crates/exo-engine/tests/tiny_models.rs, scripts/gen_tiny_model_fixture.py):

- `tiny-qwen2.gguf`: architecture `qwen2` (q/k/v biases, rope on the two halves of each head, untied output head),
  3 layers;
- `tiny-llama3.gguf`: architecture `llama` with a Llama 3.1 `rope_freqs.weight` (per-pair rope frequency
  divisors) and a tied output head, 2 layers;
- `tiny-qwen3.gguf`: architecture `qwen3` (per-head q/k RMS norms, no biases, untied head), 2 layers;
- `tiny-gemma2.gguf`: architecture `gemma2` (embeddings scaled by √hidden, post-attention and post-FFN norms, GeGLU,
  attention scores soft-capped at 2 and logits at 8, both tight enough to change them), 4 layers, the even ones over
  a sliding window of 4 positions;
- `tiny-gemma3.gguf`: architecture `gemma3` (embeddings scaled by √hidden, q/k norms, post-attention and post-FFN
  norms, GeGLU, a tied head) with 6 layers, the first five over a sliding window of 4 positions (so that every
  prompt runs past it) at rope base 10,000 and the last global at 1,000,000;
- `tiny-mixtral.gguf`: architecture `llama` with 8 experts per layer, 2 used per token (Mixtral's layout), 2 layers;
- `tiny-mixtral-split.gguf`: the same model in the old layout of one tensor per expert (`blk.N.ffn_gate.E.weight`,
  as llama.cpp wrote Mixtral files before it merged them, and llama.cpp no longer reads);
- `tiny-qwen3moe.gguf`: architecture `qwen3moe` (q/k norms) with 16 experts per layer, 4 used per token, 2 layers;
- `tiny-phi3.gguf`: architecture `phi3` (fused q/k/v and gate/up tensors, long-context rope factors), 2 layers;
- `tiny-gpt-oss.gguf`: architecture `gpt-oss` (biases, attention sinks, alternating sliding windows, YaRN rope, 16
  experts with biases, 4 per token, the clamped SwiGLU), 4 layers;
- `tiny-quants.gguf`: architecture `llama`, 256 wide (so that 256-value super-blocks fit; FFN 512, head size 64),
  6 layers whose matrices are IQ4_NL, IQ4_XS, MXFP4, Q2_K, Q3_K and Q5_K in turn (quantized by
  scripts/tiny_quants.py, or gguf-py for MXFP4), for checking those weight types, not an architecture (being
  quantized, its log-probabilities agree with llama.cpp's only to about 0.1 on average; see tiny_models.rs).

The others are 128 wide with 4 query heads sharing 2 KV heads (head size 32); all take the real tokenizer (49152
tokens) of the donor model. The layers' matrices are F32, so that llama.cpp computes them without rounding its activations
to 8 bits (with Q8_0 matrices, its log-probabilities move by about 0.06 on average from an exact float64 forward
pass, as much as a small bug would); the token embeddings and the output head are Q8_0, to keep the files small.
The weights are random but scaled so that attention is peaked (positions, hence rope, matter) and the logits are
spread out (most top-2 gaps are well above llama.cpp's numerical noise).

The bytes depend on numpy's default generator, the `gguf` writer and the donor file: the test compares each file's
sha256 with the one its llama.cpp reference data was computed on, so a change in any shows as a sha256 mismatch.

Usage: pip install gguf==0.19.0 numpy
       python3 scripts/make-tiny-models.py OUT_DIR [--donor SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import argparse
import math
import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

import tiny_quants

HIDDEN, HEADS, KV_HEADS, FFN, CONTEXT = 128, 4, 2, 256, 512
HEAD_DIM = HIDDEN // HEADS


def tokenizer_fields(donor: str) -> list[tuple]:
    """Every `tokenizer.*` key of the donor as (name, value, type, sub_type)."""
    reader = gguf.GGUFReader(donor)
    fields = []
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            sub_type = field.types[1] if len(field.types) > 1 else None
            fields.append((name, field.contents(), field.types[0], sub_type))
    return fields


def llama3_rope_factors(base: float, dim: int) -> np.ndarray:
    """Llama 3.1's frequency-dependent rope scaling as per-pair divisors, as llama.cpp's converter computes them
    (conversion/llama.py, `generate_extra_tensors`): factor 8, low_freq_factor 1, high_freq_factor 4, original
    context 8192."""
    factor, low_freq_factor, high_freq_factor, old_context_len = 8.0, 1.0, 4.0, 8192
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


class Model:
    """A GGUF writer with a seeded generator and helpers for random tensors."""

    def __init__(self, path: str, arch: str, seed: int, tokenizer: list[tuple], name: str | None = None):
        self.rng = np.random.default_rng(seed)
        self.w = gguf.GGUFWriter(path, arch)
        self.w.add_name(name or os.path.splitext(os.path.basename(path))[0])
        for name, value, vtype, sub_type in tokenizer:
            self.w.add_key_value(name, value, vtype, sub_type=sub_type)
        self.vocab = len(next(v for n, v, _, _ in tokenizer if n == "tokenizer.ggml.tokens"))

    def normal(self, shape, std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def matrix(self, name: str, rows: int, cols: int, std: float, kind: T = T.F32) -> None:
        x = self.normal((rows, cols), std)
        if kind == T.F32:
            self.w.add_tensor(name, x)
        elif kind in tiny_quants.QUANTIZERS:
            self.w.add_tensor(name, tiny_quants.quantize(x, kind), raw_dtype=kind)
        else:
            self.w.add_tensor(name, gguf.quants.quantize(x, kind), raw_dtype=kind)

    def vector(self, name: str, n: int, mean: float, std: float) -> None:
        self.w.add_tensor(name, np.float32(mean) + self.normal(n, std))

    def blocks(self, layers: int, biases: bool, qk_norm: bool = False, post_norms: bool = False,
               experts: tuple[int, int] | None = None, split_experts: bool = False) -> None:
        """`experts` = (count, width): mixture-of-experts feed-forward layers (a router and 3-D expert tensors, or
        with `split_experts` the same values as one 2-D tensor per expert)."""
        kv = KV_HEADS * HEAD_DIM
        for i in range(layers):
            b = f"blk.{i}."
            self.vector(b + "attn_norm.weight", HIDDEN, 1.0, 0.1)
            # Large q/k weights make the attention peaked, so that where each position's rotation lands matters.
            self.matrix(b + "attn_q.weight", HIDDEN, HIDDEN, 0.12)
            self.matrix(b + "attn_k.weight", kv, HIDDEN, 0.12)
            self.matrix(b + "attn_v.weight", kv, HIDDEN, 0.1)
            if biases:
                self.vector(b + "attn_q.bias", HIDDEN, 0.0, 0.5)
                self.vector(b + "attn_k.bias", kv, 0.0, 1.0)
                self.vector(b + "attn_v.bias", kv, 0.0, 0.2)
            if qk_norm:
                # Normed heads have unit RMS: the norms' weights scale them back up to a peaked attention.
                self.vector(b + "attn_q_norm.weight", HEAD_DIM, 1.5, 0.3)
                self.vector(b + "attn_k_norm.weight", HEAD_DIM, 1.5, 0.3)
            self.matrix(b + "attn_output.weight", HIDDEN, HIDDEN, 0.1)
            if post_norms:
                self.vector(b + "post_attention_norm.weight", HIDDEN, 1.0, 0.1)
            self.vector(b + "ffn_norm.weight", HIDDEN, 1.0, 0.1)
            if experts is None:
                self.matrix(b + "ffn_gate.weight", FFN, HIDDEN, 0.1)
                self.matrix(b + "ffn_up.weight", FFN, HIDDEN, 0.1)
                self.matrix(b + "ffn_down.weight", HIDDEN, FFN, 0.1)
            else:
                count, width = experts
                # Router logits about 2 apart: which experts win, and by how much, changes from token to token.
                self.matrix(b + "ffn_gate_inp.weight", count, HIDDEN, 0.18)
                # numpy (experts, rows, columns) is ggml's [columns, rows, experts].
                stacks = [("gate", self.normal((count, width, HIDDEN), 0.15)),
                          ("up", self.normal((count, width, HIDDEN), 0.15)),
                          ("down", self.normal((count, HIDDEN, width), 0.2))]
                for kind, stack in stacks:
                    if split_experts:
                        for e in range(count):
                            self.w.add_tensor(f"{b}ffn_{kind}.{e}.weight", np.ascontiguousarray(stack[e]))
                    else:
                        self.w.add_tensor(f"{b}ffn_{kind}_exps.weight", stack)
            if post_norms:
                self.vector(b + "post_ffw_norm.weight", HIDDEN, 1.0, 0.1)

    def close(self) -> None:
        self.w.write_header_to_file()
        self.w.write_kv_data_to_file()
        self.w.write_tensors_to_file()
        self.w.close()


def hparams(w: gguf.GGUFWriter, layers: int, rope_base: float, rms_eps: float, ffn: int = FFN) -> None:
    w.add_block_count(layers)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(ffn)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(rms_eps)


def write_qwen2(path: str, tokenizer: list[tuple]) -> None:
    layers = 3
    m = Model(path, "qwen2", seed=2, tokenizer=tokenizer)
    hparams(m.w, layers, rope_base=1_000_000.0, rms_eps=1e-6)
    m.matrix("token_embd.weight", m.vocab, HIDDEN, 0.5, kind=T.Q8_0)
    m.blocks(layers, biases=True)
    m.vector("output_norm.weight", HIDDEN, 1.0, 0.1)
    m.matrix("output.weight", m.vocab, HIDDEN, 0.3, kind=T.Q8_0)
    m.close()


def write_llama3(path: str, tokenizer: list[tuple]) -> None:
    layers = 2
    base = 10_000.0  # with head size 32, pairs 11-15 have wavelengths beyond 2048 positions: 5 factors differ from 1
    m = Model(path, "llama", seed=3, tokenizer=tokenizer)
    hparams(m.w, layers, rope_base=base, rms_eps=1e-5)
    m.w.add_tensor("rope_freqs.weight", llama3_rope_factors(base, HEAD_DIM))
    # Tied head: the logits are the token embeddings against the final hidden state.
    m.matrix("token_embd.weight", m.vocab, HIDDEN, 0.3, kind=T.Q8_0)
    m.blocks(layers, biases=False)
    m.vector("output_norm.weight", HIDDEN, 1.0, 0.1)
    m.close()


def write_qwen3(path: str, tokenizer: list[tuple]) -> None:
    layers = 2
    m = Model(path, "qwen3", seed=4, tokenizer=tokenizer)
    hparams(m.w, layers, rope_base=1_000_000.0, rms_eps=1e-6)
    m.w.add_key_length(HEAD_DIM)
    m.w.add_value_length(HEAD_DIM)
    m.matrix("token_embd.weight", m.vocab, HIDDEN, 0.5, kind=T.Q8_0)
    m.blocks(layers, biases=False, qk_norm=True)
    m.vector("output_norm.weight", HIDDEN, 1.0, 0.1)
    m.matrix("output.weight", m.vocab, HIDDEN, 0.3, kind=T.Q8_0)
    m.close()


def write_gemma2(path: str, tokenizer: list[tuple]) -> None:
    layers = 4
    m = Model(path, "gemma2", seed=6, tokenizer=tokenizer)
    hparams(m.w, layers, rope_base=10_000.0, rms_eps=1e-6)
    m.w.add_key_length(HEAD_DIM)
    m.w.add_value_length(HEAD_DIM)
    m.w.add_sliding_window(4)
    m.w.add_attn_logit_softcapping(2.0)
    m.w.add_final_logit_softcapping(8.0)
    m.matrix("token_embd.weight", m.vocab, HIDDEN, 0.3 / math.sqrt(HIDDEN) * 4, kind=T.Q8_0)
    m.blocks(layers, biases=False, post_norms=True)
    m.vector("output_norm.weight", HIDDEN, 1.0, 0.1)
    m.close()


def write_gemma3(path: str, tokenizer: list[tuple]) -> None:
    layers = 6
    m = Model(path, "gemma3", seed=5, tokenizer=tokenizer)
    hparams(m.w, layers, rope_base=1_000_000.0, rms_eps=1e-6)
    m.w.add_key_length(HEAD_DIM)
    m.w.add_value_length(HEAD_DIM)
    m.w.add_sliding_window(4)
    # The embeddings are scaled up by √128 on the way in; the tied head reads them unscaled.
    m.matrix("token_embd.weight", m.vocab, HIDDEN, 0.3 / math.sqrt(HIDDEN) * 4, kind=T.Q8_0)
    m.blocks(layers, biases=False, qk_norm=True, post_norms=True)
    m.vector("output_norm.weight", HIDDEN, 1.0, 0.1)
    m.close()


def write_mixtral(path: str, tokenizer: list[tuple], split_experts: bool = False) -> None:
    """Mixtral's layout: a `llama` file with `expert_count` 8, 2 used per token, each expert `feed_forward_length`
    wide; with `split_experts`, one tensor per expert (the same values)."""
    layers, count, width = 2, 8, 64
    m = Model(path, "llama", seed=7, tokenizer=tokenizer, name="tiny-mixtral")
    hparams(m.w, layers, rope_base=1_000_000.0, rms_eps=1e-5, ffn=width)
    m.w.add_expert_count(count)
    m.w.add_expert_used_count(2)
    m.matrix("token_embd.weight", m.vocab, HIDDEN, 0.5, kind=T.Q8_0)
    m.blocks(layers, biases=False, experts=(count, width), split_experts=split_experts)
    m.vector("output_norm.weight", HIDDEN, 1.0, 0.1)
    m.matrix("output.weight", m.vocab, HIDDEN, 0.3, kind=T.Q8_0)
    m.close()


def write_qwen3moe(path: str, tokenizer: list[tuple]) -> None:
    """Qwen 3 MoE's layout: q/k norms, 16 experts of which 4 run per token, each `expert_feed_forward_length`
    wide."""
    layers, count, width = 2, 16, 32
    m = Model(path, "qwen3moe", seed=8, tokenizer=tokenizer)
    hparams(m.w, layers, rope_base=1_000_000.0, rms_eps=1e-6)
    m.w.add_key_length(HEAD_DIM)
    m.w.add_value_length(HEAD_DIM)
    m.w.add_expert_count(count)
    m.w.add_expert_used_count(4)
    m.w.add_expert_feed_forward_length(width)
    m.matrix("token_embd.weight", m.vocab, HIDDEN, 0.5, kind=T.Q8_0)
    m.blocks(layers, biases=False, qk_norm=True, experts=(count, width))
    m.vector("output_norm.weight", HIDDEN, 1.0, 0.1)
    m.matrix("output.weight", m.vocab, HIDDEN, 0.3, kind=T.Q8_0)
    m.close()


def write_phi3(path: str, tokenizer: list[tuple]) -> None:
    """Phi-3's layout: q/k/v fused into `attn_qkv`, gate and up fused into `ffn_up` (gate rows first), and the
    long-context rope: per-pair frequency divisors for sequences beyond the original context (64 positions here,
    so that every run uses the long ones) with the attention factor that goes with them."""
    layers = 2
    kv = KV_HEADS * HEAD_DIM
    # Not named "phi3": llama.cpp gives the special tokens of a model so named Phi-3's own, which this donor lacks.
    m = Model(path, "phi3", seed=9, tokenizer=tokenizer, name="tiny-p3")
    hparams(m.w, layers, rope_base=10_000.0, rms_eps=1e-5)
    m.w.add_rope_scaling_orig_ctx_len(64)
    m.w.add_rope_scaling_attn_factors(1.2)
    m.w.add_tensor("rope_factors_long.weight", np.linspace(1.0, 12.0, HEAD_DIM // 2, dtype=np.float32))
    m.w.add_tensor("rope_factors_short.weight", np.linspace(1.0, 1.5, HEAD_DIM // 2, dtype=np.float32))
    m.matrix("token_embd.weight", m.vocab, HIDDEN, 0.5, kind=T.Q8_0)
    for i in range(layers):
        b = f"blk.{i}."
        m.vector(b + "attn_norm.weight", HIDDEN, 1.0, 0.1)
        q = m.normal((HIDDEN, HIDDEN), 0.12)
        k = m.normal((kv, HIDDEN), 0.12)
        v = m.normal((kv, HIDDEN), 0.1)
        m.w.add_tensor(b + "attn_qkv.weight", np.concatenate([q, k, v]))
        m.matrix(b + "attn_output.weight", HIDDEN, HIDDEN, 0.1)
        m.vector(b + "ffn_norm.weight", HIDDEN, 1.0, 0.1)
        m.w.add_tensor(b + "ffn_up.weight", m.normal((2 * FFN, HIDDEN), 0.1))
        m.matrix(b + "ffn_down.weight", HIDDEN, FFN, 0.1)
    m.vector("output_norm.weight", HIDDEN, 1.0, 0.1)
    m.matrix("output.weight", m.vocab, HIDDEN, 0.3, kind=T.Q8_0)
    m.close()


def write_gpt_oss(path: str, tokenizer: list[tuple]) -> None:
    """gpt-oss's layout: q/k/v/o biases, per-head attention sinks, every other layer over a sliding window (4
    positions here), YaRN rope (factor 4 over an original context of 64), and a mixture of 16 experts, 4 per token,
    with biases on the router and on every expert product and the clamped SwiGLU (gate and up weights large
    enough that the clamp at 7 bites)."""
    layers, count, width = 4, 16, 32
    kv = KV_HEADS * HEAD_DIM
    # Seed 11: with seed 10, one position of the fibonacci prompt had two router logits 1e-4 apart at the
    # fourth place, where llama.cpp and exo chose different experts (routing is discontinuous there) and that
    # step's log-probability moved by 0.68; seed 11 has no such tie in the prompts' routes.
    m = Model(path, "gpt-oss", seed=11, tokenizer=tokenizer)
    hparams(m.w, layers, rope_base=10_000.0, rms_eps=1e-5, ffn=width)
    m.w.add_key_length(HEAD_DIM)
    m.w.add_value_length(HEAD_DIM)
    m.w.add_sliding_window(4)
    m.w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    m.w.add_rope_scaling_factor(4.0)
    m.w.add_rope_scaling_orig_ctx_len(64)
    m.w.add_expert_count(count)
    m.w.add_expert_used_count(4)
    m.w.add_expert_feed_forward_length(width)
    m.matrix("token_embd.weight", m.vocab, HIDDEN, 0.5, kind=T.Q8_0)
    for i in range(layers):
        b = f"blk.{i}."
        m.vector(b + "attn_norm.weight", HIDDEN, 1.0, 0.1)
        m.matrix(b + "attn_q.weight", HIDDEN, HIDDEN, 0.12)
        m.vector(b + "attn_q.bias", HIDDEN, 0.0, 0.5)
        m.matrix(b + "attn_k.weight", kv, HIDDEN, 0.12)
        m.vector(b + "attn_k.bias", kv, 0.0, 0.5)
        m.matrix(b + "attn_v.weight", kv, HIDDEN, 0.1)
        m.vector(b + "attn_v.bias", kv, 0.0, 0.2)
        m.matrix(b + "attn_output.weight", HIDDEN, HIDDEN, 0.1)
        m.vector(b + "attn_output.bias", HIDDEN, 0.0, 0.2)
        # Sink logits about as large as the scores: they take a real share of each softmax.
        m.vector(b + "attn_sinks.weight", HEADS, 2.0, 1.0)
        m.vector(b + "post_attention_norm.weight", HIDDEN, 1.0, 0.1)
        m.matrix(b + "ffn_gate_inp.weight", count, HIDDEN, 0.18)
        m.vector(b + "ffn_gate_inp.bias", count, 0.0, 0.5)
        m.w.add_tensor(b + "ffn_gate_exps.weight", m.normal((count, width, HIDDEN), 0.4))
        m.w.add_tensor(b + "ffn_gate_exps.bias", m.normal((count, width), 0.5))
        m.w.add_tensor(b + "ffn_up_exps.weight", m.normal((count, width, HIDDEN), 0.4))
        m.w.add_tensor(b + "ffn_up_exps.bias", m.normal((count, width), 0.5))
        m.w.add_tensor(b + "ffn_down_exps.weight", m.normal((count, HIDDEN, width), 0.05))
        m.w.add_tensor(b + "ffn_down_exps.bias", m.normal((count, HIDDEN), 0.1))
    m.vector("output_norm.weight", HIDDEN, 1.0, 0.1)
    m.matrix("output.weight", m.vocab, HIDDEN, 0.3, kind=T.Q8_0)
    m.close()


def write_quants(path: str, tokenizer: list[tuple]) -> None:
    hidden, heads, kv_heads, ffn = 256, 4, 2, 512
    head_dim = hidden // heads
    kinds = [T.IQ4_NL, T.IQ4_XS, T.MXFP4, T.Q2_K, T.Q3_K, T.Q5_K]
    m = Model(path, "llama", seed=7, tokenizer=tokenizer)
    w = m.w
    w.add_block_count(len(kinds))
    w.add_context_length(CONTEXT)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10_000.0)
    w.add_layer_norm_rms_eps(1e-5)
    m.matrix("token_embd.weight", m.vocab, hidden, 0.5, kind=T.Q8_0)
    # The standard deviations of the 128-wide models, over √2 for the rows twice as long.
    s = 1 / math.sqrt(2)
    kv = kv_heads * head_dim
    for i, kind in enumerate(kinds):
        b = f"blk.{i}."
        m.vector(b + "attn_norm.weight", hidden, 1.0, 0.1)
        m.matrix(b + "attn_q.weight", hidden, hidden, 0.12 * s, kind)
        m.matrix(b + "attn_k.weight", kv, hidden, 0.12 * s, kind)
        m.matrix(b + "attn_v.weight", kv, hidden, 0.1 * s, kind)
        m.matrix(b + "attn_output.weight", hidden, hidden, 0.1 * s, kind)
        m.vector(b + "ffn_norm.weight", hidden, 1.0, 0.1)
        m.matrix(b + "ffn_gate.weight", ffn, hidden, 0.1 * s, kind)
        m.matrix(b + "ffn_up.weight", ffn, hidden, 0.1 * s, kind)
        m.matrix(b + "ffn_down.weight", hidden, ffn, 0.1 * s, kind)
    m.vector("output_norm.weight", hidden, 1.0, 0.1)
    m.matrix("output.weight", m.vocab, hidden, 0.3 * s, kind=T.Q8_0)
    m.close()


def main() -> None:
    home = os.path.expanduser("~")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--donor", default=os.path.join(home, ".cache/exo/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
                   help="GGUF file whose tokenizer the tiny models take")
    a = p.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    tokenizer = tokenizer_fields(a.donor)
    write_qwen2(os.path.join(a.out_dir, "tiny-qwen2.gguf"), tokenizer)
    write_llama3(os.path.join(a.out_dir, "tiny-llama3.gguf"), tokenizer)
    write_qwen3(os.path.join(a.out_dir, "tiny-qwen3.gguf"), tokenizer)
    write_gemma2(os.path.join(a.out_dir, "tiny-gemma2.gguf"), tokenizer)
    write_gemma3(os.path.join(a.out_dir, "tiny-gemma3.gguf"), tokenizer)
    write_mixtral(os.path.join(a.out_dir, "tiny-mixtral.gguf"), tokenizer)
    write_mixtral(os.path.join(a.out_dir, "tiny-mixtral-split.gguf"), tokenizer, split_experts=True)
    write_qwen3moe(os.path.join(a.out_dir, "tiny-qwen3moe.gguf"), tokenizer)
    write_phi3(os.path.join(a.out_dir, "tiny-phi3.gguf"), tokenizer)
    write_gpt_oss(os.path.join(a.out_dir, "tiny-gpt-oss.gguf"), tokenizer)
    write_quants(os.path.join(a.out_dir, "tiny-quants.gguf"), tokenizer)
    print(f"wrote tiny-qwen2, tiny-llama3, tiny-qwen3, tiny-gemma2, tiny-gemma3, tiny-mixtral(-split), tiny-qwen3moe, "
          f"tiny-phi3, tiny-gpt-oss and tiny-quants (.gguf) to {a.out_dir}")


if __name__ == "__main__":
    main()
