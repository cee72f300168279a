#!/usr/bin/env python3
"""Writes crates/exo-engine/tests/data/spm_fixture.json: a small SentencePiece BPE vocabulary and the ids
SentencePiece itself gives for a list of texts, so the engine's SPM tokenizer can be checked against an
independent implementation without any model file.

Usage: pip install sentencepiece && python3 scripts/gen_spm_fixture.py [output.json]

The model is trained the way LLaMA's tokenizer was (BPE, byte fallback, identity normalization, no removal of
extra whitespace, a dummy prefix space), on a corpus generated here from a fixed seed, so the output is
reproducible.
"""

import json
import os
import random
import sys
import tempfile

import sentencepiece as spm

WORDS = """the of and to in is was for on that with as by at from his her they this have are not be
which one had were all their there been has when who will more no if out so said what up its about into
than them can only other new some could time these two may then do first any my now such like our over man
me even most made after also did many before must through back years where much your way well down should
because each just those people how too little state good very make world still own see men work long get
here between both life being under never day same another know while last might us great old year off come
since against go came right used take three tokenizer token merge vocabulary piece byte fallback model
engine layer shard cluster network peer ring sample logits prompt stream decode encode unicode space""".split()

FIXED_LINES = [
    "Hello world! Hello, World. HELLO WORLD?",
    "naïve café résumé über straße façade jalapeño",
    "日本語のテキストです。東京は日本の首都です。",
    "中文文本，你好世界。",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159",
    "def add(a, b):\n    return a + b\n",
    "e=mc^2; x_{i+1} = x_i - f(x)/f'(x)",
    "It's a dog's life, isn't it? We'll see; they'd know.",
    "URL: https://example.com/path?q=1&r=2",
    "tabs\tand\ttabs",
]


def corpus(seed: int = 1234, n: int = 3000) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        line = " ".join(words)
        if rng.random() < 0.4:
            line += rng.choice([".", "!", "?", ",", ";", ":"])
        if rng.random() < 0.2:
            line += " " + str(rng.randint(0, 99999))
        lines.append(line)
        if i % 10 == 0:
            lines.append(FIXED_LINES[(i // 10) % len(FIXED_LINES)])
    return lines


CASES = [
    "",
    " ",
    "   ",
    "Hello world",
    " Hello world",
    "  Hello world",
    "Hello  world",
    "Hello world ",
    "hello\nworld\n\n",
    "tabs\tand   spaces",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see: it's 3.14159, not 22/7!",
    "1234567890 12 345 6789",
    "naïve café résumé",
    "日本語のテキスト",
    "中文文本，你好世界。",
    "emoji 🚀🔥 end",
    "🚀",
    "Ελληνικά κείμενα και русский текст",
    "zxqj vkwp ÿþ ǅ",
    "def add(a, b):\n    return a + b\n",
    "URL: https://example.com/path?q=1&r=2",
    "ALL CAPS AND lowercase",
    "e=mc^2; x_{i+1} = x_i - f(x)/f'(x)",
    "tokenizer vocabulary merges; the model samples logits from the prompt",
    "\u00a0non-breaking\u2003em space\u200bzero width",
    "a" * 40,
]


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "crates", "exo-engine", "tests", "data", "spm_fixture.json")
    out = sys.argv[1] if len(sys.argv) > 1 else default_out

    with tempfile.TemporaryDirectory() as tmp:
        text_path = os.path.join(tmp, "corpus.txt")
        with open(text_path, "w", encoding="utf-8") as f:
            f.write("\n".join(corpus()) + "\n")
        prefix = os.path.join(tmp, "spm")
        spm.SentencePieceTrainer.train(
            input=text_path,
            model_prefix=prefix,
            model_type="bpe",
            vocab_size=800,
            byte_fallback=True,
            character_coverage=0.995,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            split_digits=True,
            num_threads=1,
            minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")

    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        # GGUF / SentencePiece piece types: 1 normal, 2 unknown, 3 control, 5 unused, 6 byte.
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_unused(i):
            types.append(5)
        elif sp.is_byte(i):
            types.append(6)
        else:
            types.append(1)

    cases = [{"text": t, "ids": sp.encode(t, out_type=int)} for t in CASES]
    fixture = {
        "source": "scripts/gen_spm_fixture.py with sentencepiece " + spm.__version__,
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "unk_id": sp.unk_id(),
        "pieces": pieces,
        "scores": scores,
        "types": types,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"wrote {out}: {len(pieces)} pieces, {len(cases)} cases")


if __name__ == "__main__":
    main()
