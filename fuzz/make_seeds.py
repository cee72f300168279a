#!/usr/bin/env python3
"""Writes the seed inputs of exo's fuzz targets into fuzz/corpus/<target>/ (a few KB in all): protobuf peer
messages, small GGUF headers, texts, model references and API request bodies, each in the input format its target
reads (see the doc comment at the top of each fuzz_targets/*.rs). Uses only the standard library.

Usage: python3 fuzz/make_seeds.py        (rewrites the seed-* files; other corpus files are left alone)
"""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- protobuf (proto/exo.proto) ----


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, wire, payload):
    return varint(number << 3 | wire) + payload


def uint(number, n):
    return field(number, 0, varint(n))


def string(number, s):
    b = s.encode() if isinstance(s, str) else s
    return field(number, 2, varint(len(b)) + b)


def message(number, body):
    return field(number, 2, varint(len(body)) + body)


def f32(number, x):
    return field(number, 5, struct.pack("<f", x))


def packed(number, values):
    body = b"".join(varint(v) for v in values)
    return field(number, 2, varint(len(body)) + body)


def fingerprint(model, n_layers, stages):
    """plan.rs's FNV-1a over a plan's content."""
    h = 0xCBF29CE484222325
    prime = 0x100000001B3

    def eat(data):
        nonlocal h
        for b in data:
            h = ((h ^ b) * prime) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ 0xFF) * prime) & 0xFFFFFFFFFFFFFFFF

    eat(model.encode())
    eat(struct.pack("<Q", n_layers))
    for node, address, start, end in stages:
        eat(node.encode())
        eat(address.encode())
        eat(struct.pack("<Q", start))
        eat(struct.pack("<Q", end))
    return h


def plan(model, n_layers, stages):
    body = uint(1, fingerprint(model, n_layers, stages)) + string(2, model) + uint(3, n_layers)
    for node, address, start, end in stages:
        stage = string(1, node) + string(2, address) + uint(3, start) + uint(4, end)
        body += message(4, stage)
    return body


def sampling(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, presence, frequency, seed):
    return (
        f32(1, temperature) + uint(2, top_k) + f32(3, top_p) + f32(4, min_p) + f32(5, repeat_penalty)
        + uint(6, repeat_last_n) + f32(7, presence) + f32(8, frequency) + uint(9, seed)
    )


def file_key(repo, revision, file):
    return string(1, repo) + string(2, revision) + string(3, file)


def peer_seeds():
    one = [("fuzz-node", "127.0.0.1:52416", 0, 29)]
    two = [("fuzz-node", "127.0.0.1:52416", 0, 14), ("other", "10.0.0.2:52416", 15, 29)]
    begin = lambda p, stage, s, extra=b"": (
        uint(1, 7) + message(2, p) + uint(3, stage) + string(4, "10.0.0.2:52416") + string(5, "other")
        + uint(6, 2048) + message(7, s) + packed(8, [1, 2, 3, 4, 3, 2, 1]) + uint(9, 16) + packed(10, [2, 0x7FC00000])
        + extra
    )
    default_sampling = sampling(0.8, 40, 0.95, 0.05, 1.1, 64, 0.5, 0.5, 42)
    return {
        "begin-one-stage": b"\x00" + begin(plan("smollm2-135m", 30, one), 0, default_sampling, uint(11, 5)),
        "begin-last-of-two": b"\x00" + begin(plan("hf:o/r/m.gguf", 30, two), 1, sampling(0, 0, 1, 0, 1, 0, 0, 0, 0)),
        # A grammar (llguidance's serialized TopLevelGrammar, as Grammar::to_wire writes it) for the sampling stage.
        "begin-grammar-schema": b"\x00" + begin(plan("smollm2-135m", 30, one), 0, default_sampling, string(12, json.dumps(
            {"grammars": [{"json_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}]}))),
        "begin-grammar-lark": b"\x00" + begin(plan("smollm2-135m", 30, one), 0, default_sampling, string(12, json.dumps(
            {"grammars": [{"lark_grammar": 'start: "yes" | "no" | /[0-9]+/'}]}))),
        "activation-tokens": b"\x01" + uint(1, 7) + uint(2, 99) + uint(3, 0) + packed(4, [1, 2, 3]) + uint(6, 3)
        + uint(7, 1),
        "activation-hidden": b"\x01" + uint(1, 7) + uint(2, 99) + uint(3, 3) + string(5, struct.pack("<8f", *range(8)))
        + uint(6, 1),
        "token-event": b"\x02" + uint(1, 7) + uint(2, 99) + uint(3, 28) + string(6, "other") + f32(7, -0.5)
        + message(8, uint(1, 29) + f32(2, -1.0)) + message(8, uint(1, 49151) + f32(2, -2.0)),
        "token-event-error": b"\x02" + uint(1, 7) + uint(2, 99) + uint(4, 1) + string(5, "out of memory")
        + string(6, "other"),
        "hello": b"\x03" + string(1, "other") + string(2, "10.0.0.2") + uint(3, 52415) + uint(4, 52416)
        + uint(5, 16 << 30) + uint(6, 8 << 30) + uint(7, 4 << 30) + uint(8, 4 << 30) + uint(9, 8) + string(10, "x86_64")
        + string(11, "avx2") + string(12, "avx2") + message(13, string(1, "m") + uint(2, 0) + uint(3, 9) + uint(4, 30)
        + uint(5, 1 << 20)) + string(14, "10.0.0.3:52416"),
        "file-held-cached": b"\x04" + file_key("exo-fuzz/cached", "main", "model.gguf"),
        "file-held-partial": b"\x04" + file_key("exo-fuzz/partial", "main", "model.gguf"),
        "file-held-traversal": b"\x04" + file_key("exo-fuzz/cached", "..", "../../refs/main"),
        "held-reply": b"\x05" + uint(1, 1) + uint(2, 4096) + string(3, "ab" * 32) + string(4, "cd" * 20)
        + packed(5, [0, 100, 200, 300, 250, 400, 401, 5000]),
        "read-file-cached": b"\x06" + message(1, file_key("exo-fuzz/cached", "main", "model.gguf")) + uint(2, 100)
        + uint(3, 200),
        "read-file-partial": b"\x06" + message(1, file_key("exo-fuzz/partial", "main", "model.gguf")) + uint(2, 1000)
        + uint(3, 1048),
        "end": b"\x07" + uint(1, 7),
    }


# ---- GGUF (crates/exo-engine/src/gguf.rs) ----

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gvalue(kind, v):
    fmt = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", U64: "<Q", I64: "<q", F64: "<d"}
    if kind in fmt:
        return struct.pack(fmt[kind], v)
    if kind == BOOL:
        return bytes([1 if v else 0])
    if kind == STRING:
        return gstr(v)
    item_kind, items = v
    return struct.pack("<IQ", item_kind, len(items)) + b"".join(gvalue(item_kind, i) for i in items)


def gguf(metadata, tensors, alignment=32, version=3):
    """metadata: [(key, kind, value)]; tensors: [(name, dims, ggml type, bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, kind, value in metadata:
        out += gstr(key) + struct.pack("<I", kind) + gvalue(kind, value)
    offset = 0
    data = b""
    for name, dims, kind, payload in tensors:
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", kind, offset)
        padded = payload + b"\0" * (-len(payload) % alignment)
        data += padded
        offset += len(padded)
    out += b"\0" * (-len(out) % alignment)
    return out + data


def bpe_tokenizer():
    tokens = ["a", "b", "c", "ab", "\u0120", "\u0120a", "\u010a", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "Hi"]
    types = [1] * 7 + [3, 3, 3, 1]
    return [
        ("tokenizer.ggml.model", STRING, "gpt2"),
        ("tokenizer.ggml.pre", STRING, "smollm"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
        ("tokenizer.ggml.merges", ARRAY, (STRING, ["a b", "\u0120 a", "H i"])),
        ("tokenizer.ggml.bos_token_id", U32, 7),
        ("tokenizer.ggml.eos_token_id", U32, 8),
        ("tokenizer.chat_template", STRING,
         "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    ]


def spm_tokenizer():
    tokens = ["<unk>", "<s>", "</s>", "<0x41>", "\u2581", "a", "b", "\u2581a", "ab"]
    return [
        ("tokenizer.ggml.model", STRING, "llama"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -1.5, -1.0])),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [2, 3, 3, 6, 1, 1, 1, 1, 1])),
        ("tokenizer.ggml.add_bos_token", BOOL, True),
    ]


def llama(layers=2, context=128, width=64):
    return [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "fuzz"),
        ("llama.block_count", U32, layers),
        ("llama.context_length", U32, context),
        ("llama.embedding_length", U32, width),
        ("llama.feed_forward_length", U32, 2 * width),
        ("llama.attention.head_count", U32, 4),
        ("llama.attention.head_count_kv", U32, 2),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("llama.rope.freq_base", F32, 10000.0),
    ]


def f32s(n):
    return struct.pack(f"<{n}f", *[(i % 7) / 7 for i in range(n)])


def gguf_seeds():
    # The claim: bits 62-63 how the size is given (0: the bytes at hand, 1: that plus the low 32 bits), bit 61
    # whether the header is read as a model.
    as_model = 1 << 61
    exact = lambda b, flags=as_model: struct.pack("<Q", flags) + b
    prefix_of = lambda b, more: struct.pack("<Q", 1 << 62 | as_model | more) + b
    small = gguf(llama() + bpe_tokenizer(), [
        ("token_embd.weight", [64, 11], 0, f32s(64 * 11)),
        ("output_norm.weight", [64], 0, f32s(64)),
        ("blk.0.attn_q.weight", [32, 2], 8, b"\0" * 68),  # Q8_0: blocks of 32 in 34 bytes
    ])
    arrays = gguf([
        ("general.alignment", U32, 64),
        ("u8", U8, 1), ("i8", I8, -1), ("u16", U16, 2), ("i16", I16, -2), ("i64", I64, -3), ("f64", F64, 0.5),
        ("u64", U64, 1 << 40), ("nested", ARRAY, (ARRAY, [(U8, [1, 2]), (STRING, ["x"])])),
        ("bools", ARRAY, (BOOL, [True, False])), ("floats", ARRAY, (F32, [1.0, 2.0])),
    ], [("t", [4, 1, 1, 1], 1, b"\0" * 8)], alignment=64)
    split = gguf(llama() + [("split.count", U16, 3), ("split.no", U16, 0)] + bpe_tokenizer(), [])
    return {
        "llama-bpe": exact(small),
        "llama-bpe-prefix": prefix_of(small[: len(small) // 3], len(small) - len(small) // 3),
        "spm-v2": exact(gguf(llama(layers=1) + spm_tokenizer(), [("output.weight", [64, 9], 30, b"\0" * 64 * 9 * 2)],
                             version=2)),
        "arrays": exact(arrays, 0),
        "llama-bpe-parse-only": exact(small, 0),
        "split-first-part": exact(split),
        "no-tensors": exact(gguf([("general.architecture", STRING, "qwen2")], [])),
    }


# ---- texts, references, request bodies ----


def tokenizer_seeds():
    texts = {
        "english": "Hello, world! How are you today?",
        "chat": "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "code": "fn main() {\n    println!(\"{}\", 12345678 * 9);\n}\n",
        "unicode": "Grüße — 你好，世界！ こんにちは 🦀🦀 ﷽",
        "spaces": "   leading\t\ttabs\r\n\n  and  trailing   ",
        "contractions": "I'm sure they'll say it's 'fine', we've seen it's ok.",
    }
    seeds = {}
    for i, (name, text) in enumerate(texts.items()):
        seeds[name] = bytes([i * 3, i]) + text.encode()
    seeds["invalid-utf8"] = b"\x02\x07" + b"ab\xff\xfe\xc3(\xe2\x82 end"
    seeds["ids"] = b"\x00\x04" + struct.pack("<8I", 1, 2, 28, 49151, 49152, 49160, 0x80000000, 0xFFFFFFFF)
    seeds["spm"] = b"\x10\x01" + "Hello ▁world <s> ab".encode()
    return seeds


def reference_seeds():
    refs = {
        "hf": "hf:bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf",
        "hf-split": "hf:owner/repo/dir/model-00001-of-00003.gguf@0123456789abcdef0123456789abcdef01234567",
        "catalog": "smollm2-135m",
        "catalog-quant": "smollm2-135m:Q8_0",
        "models-folder": "local",
        "path": "/etc/passwd",
        "relative": "../models/x.gguf",
        "file-key": "exo-fuzz/cached\nmain\nmodel-00001-of-00002.gguf",
    }
    return {name: struct.pack("<H", 3) + text.encode() for name, text in refs.items()}


def api_seeds():
    user = {"role": "user", "content": "Say hi."}
    bodies = {
        "chat-minimal": {"model": "smollm2-135m", "messages": [user]},
        "chat-full": {
            "model": "hf:o/r/m.gguf", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": None}, user],
            "max_completion_tokens": 20, "max_tokens": 99, "temperature": 0, "top_p": 0.5, "top_k": 7, "min_p": 0.1,
            "seed": -1, "stop": ["\n\n", "END"], "presence_penalty": 0.5, "frequency_penalty": -0.5,
            "repetition_penalty": 1.1, "logprobs": True, "top_logprobs": 3, "n": 1, "stream": True,
            "stream_options": {"include_usage": True}, "user": "ignored"},
        "completion": {"model": "local", "prompt": "Once upon a time", "max_tokens": 8, "logprobs": 2,
                       "stop": "time", "temperature": 1.5},
        "completion-array": {"model": "/etc/passwd", "prompt": ["<|im_start|>x"], "stream": False, "seed": 7},
    }
    return {name: json.dumps(body).encode() for name, body in bodies.items()}


def main():
    targets = {
        "peer_messages": peer_seeds(),
        "gguf_header": gguf_seeds(),
        "tokenizer": tokenizer_seeds(),
        "model_reference": reference_seeds(),
        "api_request": api_seeds(),
    }
    for target, seeds in targets.items():
        folder = os.path.join(HERE, "corpus", target)
        os.makedirs(folder, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(folder, f"seed-{name}"), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main()
