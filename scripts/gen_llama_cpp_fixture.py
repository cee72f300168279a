#!/usr/bin/env python3
"""Writes crates/exo-engine/tests/data/llama_cpp_fixture.json: what llama.cpp itself does with two small
vocabularies, for the engine's tokenizer tests to match exactly.

`bpe`: the ids llama.cpp gives for a list of tricky texts under each `tokenizer.ggml.pre` value the engine
supports (add_special off, parse_special on), and the text llama_detokenize gives back (specials rendered).

The vocabulary is made here from the texts themselves (see `vocabulary`; the engine's test rebuilds it the same
way): every substring of up to MAX_LEN bytes is a token, built by merging its prefix with its last byte. With it,
BPE joins most of each pre-tokenized word, so where a pre-tokenizer splits shows in the ids.

`spm`: the SentencePiece vocabulary of tests/data/spm_fixture.json (scripts/gen_spm_fixture.py) loaded as a
`llama` vocabulary, with texts that exercise llama.cpp's own rules: BOS, special tokens written in the text, the
space it puts after them, and decoding with and without special tokens.

The model file is used only for the architecture keys llama.cpp wants before it reads a vocabulary.

Usage: pip install gguf llama-cpp-python
       python3 scripts/gen_llama_cpp_fixture.py [model.gguf] [output.json]
"""

import ctypes
import json
import os
import sys
import tempfile

import gguf
import llama_cpp

PRES = [
    "default",
    "llama-bpe",
    "dbrx",
    "tekken",
    "gpt-2",
    "smollm",
    "starcoder",
    "falcon",
    "qwen2",
    "deepseek-r1-qwen",
    "stablelm2",
    "qwen35",
    "seed-coder",
    "gpt-4o",
    "deepseek-coder",
    "deepseek-v3",
]

TEXTS = [
    "",
    " ",
    "  ",
    "\n",
    "Hello world",
    " Hello world",
    "  leading and trailing  ",
    "I'm you're YOU'RE they've it's IT'S we'll WE'LL he'd 'tis o'clock rock'n'roll",
    "it\u2019s don\u2019t",
    "1 12 123 1234 12345 123456 3.14159 1,000,000",
    "\u00b2\u00b3 \u0661\u0662\u0663 \u2460\u2461 \u00bd",
    "a  b   c\t\td\n\ne \r\n f\r\rg",
    "\n\n\n  \n \t\n",
    "x \n y  \n\n z",
    "\u00a0nbsp\u3000ideographic\u2003em\u200bzw",
    "Hello, world!!! ... ?!? (parens) [brackets] {braces} <angle> 'quotes' \"dq\" `bt`",
    "~tilde^caret|pipe$dollar+plus=eq \\backslash /slash",
    "def f(x):\n    return x**2  # comment\n",
    'fn main() { println!("hi"); }\n\tif (a && b || !c) { x += 1; }',
    "na\u00efve caf\u00e9 r\u00e9sum\u00e9 \u00dcn\u00efc\u00f6d\u00e9 \u00c6\u00d8\u00c5 stra\u00dfe",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u05e2\u05d1\u05e8\u05d9\u05ea"
    " \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0939\u093f\u0928\u094d\u0926\u0940 \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4 \u30ab\u30bf\u30ab\u30ca",
    "e\u0301 a\u0308 \u01c5 \u01c8 \u017f \u212a \u00c5",
    "\U0001f680\U0001f525\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f \u2728 \U0001f1ef\U0001f1f5",
    "CamelCase HTTPServer getHTTPResponse iPhone XMLHttpRequest ALLCAPS lowercase",
    "$100.00 50% #hashtag @user email@example.com https://x.y/z?q=1&r=2",
    "\u2192 \u2190 \u2211 \u222b \u2264 \u2265 \u00a9 \u00ae \u2122 \u20ac \u00a3 \u00a5",
    "\x00\x01\x07\x1b[31mred\x1b[0m",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "# Title\n\n- item 1\n- item 2\n\n**bold** _it_ > quote",
    "abc123def 4th 2nd v1.2.3 0x1F 1e-5 a1b2c3",
    "Hello , world . Yes ? No ! It ' s I 'm we 're",
    "a" * 30 + " " + "!" * 12 + " " * 9 + "z",
    "\u00e9\u00e9\u00e9\u00e9 \u00c9COLE \u00e9cole",
]


SPM_TEXTS = [
    "",
    "Hello world",
    " Hello  world ",
    "<s>Hello</s> world",
    "a<unk>b<s>",
    "hello\n<s>\nworld",
    "</s></s>",
    "na\u00efve caf\u00e9 \U0001f680",
]

MAX_LEN = 6
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet."""
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    chars, shifted = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def vocabulary(texts: list[str]) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges: the 256 byte tokens, then by length every substring (of the byte-level
    spelling) of 2..MAX_LEN bytes in order of first appearance, then the special tokens."""
    alphabet = byte_chars()
    spelled = ["".join(alphabet[b] for b in t.encode("utf-8")) for t in texts]
    tokens = list(alphabet)
    seen = set(tokens)
    merges = []
    for length in range(2, MAX_LEN + 1):
        for word in spelled:
            for i in range(len(word) - length + 1):
                piece = word[i : i + length]
                if piece not in seen:
                    seen.add(piece)
                    tokens.append(piece)
                    merges.append(piece[:-1] + " " + piece[-1])
    types = [1] * len(tokens) + [3] * len(SPECIALS)
    return tokens + SPECIALS, types, merges


def write_vocab_only(src: str, dst: str, add_tokenizer) -> None:
    """A GGUF file with the model's architecture keys and the tokenizer `add_tokenizer(writer)` writes."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith(("GGUF.", "tokenizer.")) or name in ("general.architecture", f"{arch}.vocab_size"):
            continue
        sub_type = field.types[1] if len(field.types) > 1 else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    add_tokenizer(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def detokenize(model, ids: list[int], special: bool) -> str:
    vocab = llama_cpp.llama_model_get_vocab(model)
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 16 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, special)
    if n < 0:
        raise RuntimeError("detokenize buffer too small")
    return buf.raw[:n].decode("utf-8", errors="replace")


def bpe_tokenizer(pre: str):
    tokens, types, merges = vocabulary(TEXTS)

    def add(writer):
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)

    return add


def spm_tokenizer(spm_fixture: dict):
    def add(writer):
        writer.add_tokenizer_model("llama")
        writer.add_token_list(spm_fixture["pieces"])
        writer.add_token_scores(spm_fixture["scores"])
        writer.add_token_types(spm_fixture["types"])
        writer.add_bos_token_id(spm_fixture["bos_id"])
        writer.add_eos_token_id(spm_fixture["eos_id"])
        writer.add_unk_token_id(spm_fixture["unk_id"])

    return add


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    home = os.path.expanduser("~")
    data = os.path.join(here, "..", "crates", "exo-engine", "tests", "data")
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(home, ".cache/exo/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(data, "llama_cpp_fixture.json")
    spm_path = os.path.join(os.path.dirname(os.path.abspath(out)), "spm_fixture.json")
    with open(spm_path, encoding="utf-8") as f:
        spm_fixture = json.load(f)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "spm.gguf")
        write_vocab_only(model, path, spm_tokenizer(spm_fixture))
        llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        spm_cases = []
        for text in SPM_TEXTS:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            spm_cases.append({
                "text": text,
                "ids": ids,
                "decoded_special": detokenize(llm.model, ids, True),
                "decoded": detokenize(llm.model, ids, False),
            })
        del llm
        for pre in PRES:
            path = os.path.join(tmp, f"{pre}.gguf")
            write_vocab_only(model, path, bpe_tokenizer(pre))
            try:
                llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
            except Exception as e:  # this llama.cpp does not know the pre-tokenizer
                print(f"skipping {pre}: {e}", file=sys.stderr)
                continue
            ids = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in TEXTS]
            decoded = [detokenize(llm.model, i, True) for i in ids]
            results[pre] = {"ids": ids, "decoded": decoded}
            del llm
    fixture = {
        "source": f"scripts/gen_llama_cpp_fixture.py, llama.cpp through llama-cpp-python {llama_cpp.__version__}",
        "bpe": {
            "vocabulary": f"substrings of the texts up to {MAX_LEN} bytes, then {SPECIALS}",
            "texts": TEXTS,
            "pre": results,
        },
        "spm": {"vocabulary": "spm_fixture.json", "cases": spm_cases},
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out}: {len(results)} pre-tokenizers x {len(TEXTS)} texts, {len(spm_cases)} SentencePiece texts")


if __name__ == "__main__":
    main()
