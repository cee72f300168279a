#!/usr/bin/env python3
"""Writes crates/exo-engine/tests/data/tiny_models_llama_cpp.json: what llama.cpp computes on the tiny random
models of scripts/make-tiny-models.py (architecture `qwen2`, and `llama` with Llama 3.1 `rope_freqs`), for
crates/exo-engine/tests/tiny_models.rs to compare the engine with.

For each model it starts llama.cpp's `llama-server -m MODEL -t 2` (default settings otherwise: KV cache in f16,
flash attention auto) and asks `/completion` for 16 greedy tokens after each prompt, given as token ids, with the
top log-probabilities of the raw logits (`n_probs`, `post_sampling_probs` off). Two kinds of tokens are masked
(logit set to minus infinity before sampling): end-of-generation tokens (`ignore_eos`), and tokens that are not
valid UTF-8 on their own (`logit_bias` false), because llama-server leaves out the probabilities of a token after
which the text ends inside a UTF-8 character. The fixture lists them all in `masked_ids`.

Per step it records, as in tests/data/smollm2-135m-instruct-q4_1.json (see ../shared/golden/README.md):
  - `id`: the chosen token;
  - `top`: the five most likely tokens before the mask, as [id, log-probability];
  - `gap`: the log-probability gap between the chosen token and the next candidate, both unmasked.
The sha256 of each model file is recorded: the test regenerates the models and checks it. `spread` is how far
llama.cpp moves from itself on the model when only its attention path changes (flash attention off), teacher-forced
with the recorded tokens: the floor under any other engine's agreement (tiny_models.rs uses it for tiny-quants).

Usage: python3 scripts/gen_tiny_model_fixture.py [--bin LLAMA_CPP_BIN_DIR] [--models DIR] [--out OUT.json]
                                                [--only FILE ...]
       (without --models, the models are made in a temporary folder by scripts/make-tiny-models.py; with --only,
       only those models' entries are computed, replacing or joining theirs in OUT.json, the rest kept as they are)
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import gguf
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["tiny-qwen2.gguf", "tiny-llama3.gguf", "tiny-qwen3.gguf", "tiny-gemma2.gguf", "tiny-gemma3.gguf",
          "tiny-mixtral.gguf", "tiny-qwen3moe.gguf", "tiny-phi3.gguf",
          "tiny-gpt-oss.gguf", "tiny-quants.gguf"]
N_PREDICT = 16
N_TOP = 5
# Enough candidates that the gap can skip masked tokens.
N_PROBS = 20
TEXT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]
# Long prompts of random tokens (past the special tokens 0-16), as (numpy seed, length), so that positions reach a
# few hundred, where Llama 3's rope frequency divisors change the rotation of the slow pairs by a large angle.
LONG_PROMPTS = [(0, 400), (1, 480)]


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


class Server:
    """llama-server on one model, on a free local port, for the life of a `with` block."""

    def __init__(self, bin_dir: str, model: str, extra: tuple[str, ...] = ()):
        self.port = free_port()
        env = dict(os.environ, LD_LIBRARY_PATH=bin_dir + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""))
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, "llama-server"), "-m", model, "-t", "2", "--port", str(self.port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def __enter__(self) -> "Server":
        for _ in range(600):
            if self.proc.poll() is not None:
                self.log.seek(0)
                sys.exit(f"llama-server exited:\n{self.log.read().decode(errors='replace')}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit("llama-server did not start in 60 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.log.close()


def gpt2_bytes() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character that spells each byte in a token's text."""
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


def non_utf8_tokens(path: str) -> tuple[int, list[int]]:
    """The size of a byte-level BPE vocabulary, and the ids of its normal tokens whose bytes are not valid UTF-8 on
    their own."""
    reader = gguf.GGUFReader(path)
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    alphabet = gpt2_bytes()
    bad = []
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind != gguf.TokenType.NORMAL:
            continue
        try:
            bytes(alphabet[c] for c in text).decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
    return len(tokens), bad


def greedy(port: int, prompt_ids: list[int], banned: list[int]) -> tuple[list[int], list[dict], list[int]]:
    r = post(port, "/completion", {
        "prompt": prompt_ids,
        "n_predict": N_PREDICT,
        "temperature": 0,
        "ignore_eos": True,
        "n_probs": N_PROBS,
        "post_sampling_probs": False,
        "cache_prompt": False,
        "return_tokens": True,
        "logit_bias": [[i, False] for i in banned],
    })
    # What the server masked (a bias of minus infinity, shown as null): the banned tokens and, with ignore_eos,
    # the end-of-generation tokens.
    masked = {b["token"] for b in r["generation_settings"]["logit_bias"] if b["bias"] is None}
    assert masked.issuperset(banned)
    ids = r["tokens"]
    probs = r["completion_probabilities"]
    assert len(ids) == N_PREDICT, f"llama.cpp stopped after {len(ids)} tokens"
    assert len(probs) == N_PREDICT, f"llama.cpp gave probabilities for {len(probs)} of {N_PREDICT} tokens"
    steps = []
    for chosen, p in zip(ids, probs):
        assert p["id"] == chosen
        top = [(t["id"], t["logprob"]) for t in p["top_logprobs"]]
        unmasked = [t for t in top if t[0] not in masked]
        assert unmasked[0][0] == chosen, f"greedy token {chosen} is not the most likely unmasked one: {top}"
        steps.append({
            "id": chosen,
            "top": [[i, round(lp, 4)] for i, lp in top[:N_TOP]],
            "gap": round(unmasked[0][1] - unmasked[1][1], 4),
        })
    return ids, steps, sorted(masked)


# llama.cpp's other attention path: its log-probabilities there, on its own tokens, measure how far llama.cpp
# moves from itself on a model (`spread` in the fixture).
SPREAD_ARGS = ("-fa", "off")


def spread(bin_dir: str, path: str, cases: list[dict], banned: list[int]) -> dict:
    """|Δ log-probability| between llama.cpp as the fixture ran it and llama.cpp with SPREAD_ARGS, teacher-forced
    with the fixture's tokens (each step a new request whose prompt holds the tokens before it), over every step
    whose token is among the second run's top candidates."""
    diffs = []
    with Server(bin_dir, path, SPREAD_ARGS) as server:
        for case in cases:
            for k, step in enumerate(case["steps"]):
                r = post(server.port, "/completion", {
                    "prompt": case["prompt_ids"] + case["ids"][:k],
                    "n_predict": 1,
                    "temperature": 0,
                    "ignore_eos": True,
                    "n_probs": N_PROBS,
                    "post_sampling_probs": False,
                    "cache_prompt": False,
                    "logit_bias": [[i, False] for i in banned],
                })
                theirs = {t["id"]: t["logprob"] for t in r["completion_probabilities"][0]["top_logprobs"]}
                ours = dict((i, lp) for i, lp in step["top"])
                if step["id"] in theirs:
                    diffs.append(abs(theirs[step["id"]] - ours[step["id"]]))
    return {"llama_server_args": " ".join(SPREAD_ARGS), "steps": len(diffs),
            "mean": round(sum(diffs) / len(diffs), 4), "max": round(max(diffs), 4)}


def model_fixture(bin_dir: str, path: str) -> dict:
    vocab, banned = non_utf8_tokens(path)
    with Server(bin_dir, path) as server:
        prompts = []
        for text in TEXT_PROMPTS:
            ids = post(server.port, "/tokenize", {"content": text, "add_special": False, "parse_special": True})
            prompts.append((text, ids["tokens"]))
        for seed, length in LONG_PROMPTS:
            long_ids = [int(i) for i in np.random.default_rng(seed).integers(17, vocab, length)]
            prompts.append((f"{length} random token ids (numpy default_rng({seed}))", long_ids))
        cases, masked_ids = [], None
        for text, prompt_ids in prompts:
            ids, steps, masked_ids = greedy(server.port, prompt_ids, banned)
            cases.append({"prompt": text, "prompt_ids": prompt_ids, "ids": ids, "steps": steps})
            gaps = [s["gap"] for s in steps]
            print(f"{os.path.basename(path)} {text[:30]!r}: gaps >= 0.3 at {sum(g >= 0.3 for g in gaps)} of "
                  f"{len(gaps)} steps, smallest {min(gaps):.3f}", file=sys.stderr)
    entry = {"file": os.path.basename(path), "sha256": sha256(path), "masked_ids": masked_ids, "greedy": cases}
    entry["spread"] = spread(bin_dir, path, cases, banned)
    print(f"{os.path.basename(path)}: llama.cpp against itself with {entry['spread']['llama_server_args']}: mean "
          f"{entry['spread']['mean']}, max {entry['spread']['max']} over {entry['spread']['steps']} steps",
          file=sys.stderr)
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.environ.get("LLAMA_CPP_BIN",
                                                   os.path.expanduser("~/.cache/llama.cpp-ref/llama.cpp/build/bin")),
                   help="folder of llama.cpp's llama-server (built by ../shared/tools/build_llama_cpp.sh)")
    p.add_argument("--models", help="folder holding the models of make-tiny-models.py (made afresh when absent)")
    p.add_argument("--out", default=os.path.join(HERE, "..", "crates", "exo-engine", "tests", "data",
                                                 "tiny_models_llama_cpp.json"))
    p.add_argument("--only", nargs="+", choices=MODELS, help="compute these models' entries only")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = a.models
        if models is None:
            models = tmp
            subprocess.run([sys.executable, os.path.join(HERE, "make-tiny-models.py"), models], check=True)
        fixture = {
            "source": "scripts/gen_tiny_model_fixture.py: llama.cpp's llama-server -t 2 (llama-cpp-python 0.3.36 "
                      "sdist), /completion with temperature 0, ignore_eos, n_probs, post_sampling_probs off",
            # The model files' bytes depend on these (scripts/make-tiny-models.py).
            "made_with": {pkg: importlib.metadata.version(pkg) for pkg in ("numpy", "gguf")},
            "models": [model_fixture(a.bin, os.path.join(models, m)) for m in (a.only or MODELS)],
        }
    if a.only:
        with open(a.out, encoding="utf-8") as f:
            kept = json.load(f)
        if kept["made_with"] != fixture["made_with"]:
            sys.exit(f"{a.out} was made with {kept['made_with']}, this run with {fixture['made_with']}: "
                     "regenerate every model")
        new = {m["file"]: m for m in fixture["models"]}
        entries = [new.pop(m["file"], m) for m in kept["models"]]
        kept["models"] = entries + [new[m] for m in MODELS if m in new]
        fixture = kept
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
