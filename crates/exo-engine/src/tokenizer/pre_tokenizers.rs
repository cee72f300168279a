//! The pre-tokenizers of byte-level BPE vocabularies: for each `tokenizer.ggml.pre` value llama.cpp knows, the
//! regexes that split text into words before merging, and the few other rules that value implies.

use super::tokenizer_error;
use crate::error::Result;

/// What a `tokenizer.ggml.pre` value means to llama.cpp.
pub(super) struct PreTokenizerRules {
    /// Applied in order, each splitting the pieces the previous left; text between matches is kept as a piece.
    pub(super) regexes: &'static [&'static str],
    /// A whole pre-tokenized word that is itself in the vocabulary is taken as one token, skipping merges.
    pub(super) ignore_merges: bool,
    pub(super) add_bos: bool,
    /// Decoding removes the space before `?!.,` and some apostrophes, as GPT-2's `clean_up_tokenization` does.
    pub(super) clean_spaces: bool,
}

const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SEED_CODER_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_REGEX: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_REGEX: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK3_REGEX: &str = r"[!\x22#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// CJK ideographs, Hangul and the blocks between, as llama.cpp's deepseek-coder regex writes them, less
/// whitespace: llama.cpp runs this regex on text whose non-ASCII whitespace (U+3000, ...) it has replaced by `\v`.
const DEEPSEEK_CJK_REGEX: &str = "[[\u{4E00}-\u{9FA5}\u{0800}-\u{4E00}\u{AC00}-\u{D7FF}]&&\\S]+";
const DEEPSEEK3_CJK_REGEX: &str = "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+";

/// The `tokenizer.ggml.pre` values supported, grouped by the rules llama.cpp gives them.
pub(super) const PRE_TOKENIZERS: &[(&[&str], PreTokenizerRules)] = &[
    (
        &["default"],
        PreTokenizerRules {
            regexes: &[r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", "[0-9][0-9][0-9]"],
            ignore_merges: false,
            add_bos: false,
            clean_spaces: true,
        },
    ),
    (
        &["llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"],
        PreTokenizerRules { regexes: &[LLAMA3_REGEX], ignore_merges: true, add_bos: true, clean_spaces: true },
    ),
    (
        &["dbrx", "smaug-bpe"],
        PreTokenizerRules { regexes: &[LLAMA3_REGEX], ignore_merges: false, add_bos: false, clean_spaces: true },
    ),
    (
        &["tekken"],
        PreTokenizerRules { regexes: &[TEKKEN_REGEX], ignore_merges: true, add_bos: true, clean_spaces: false },
    ),
    (
        &["gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "gigachat", "a.x-4.0", "mellum", "exaone4"],
        PreTokenizerRules { regexes: &[GPT2_REGEX], ignore_merges: false, add_bos: false, clean_spaces: true },
    ),
    (
        &["trillion", "granite-docling"],
        PreTokenizerRules { regexes: &[GPT2_REGEX], ignore_merges: false, add_bos: false, clean_spaces: false },
    ),
    (
        &["smollm", "command-r"],
        PreTokenizerRules {
            regexes: &[r"\p{N}", GPT2_REGEX],
            ignore_merges: false,
            add_bos: false,
            clean_spaces: false,
        },
    ),
    (
        &["starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"],
        PreTokenizerRules {
            regexes: &[r"\p{N}", GPT2_REGEX],
            ignore_merges: false,
            add_bos: false,
            clean_spaces: true,
        },
    ),
    (
        &["falcon"],
        PreTokenizerRules {
            regexes: &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_REGEX, "[0-9][0-9][0-9]"],
            ignore_merges: false,
            add_bos: false,
            clean_spaces: true,
        },
    ),
    (
        &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2"],
        PreTokenizerRules { regexes: &[QWEN2_REGEX], ignore_merges: false, add_bos: false, clean_spaces: false },
    ),
    (
        &["stablelm2", "megrez"],
        PreTokenizerRules { regexes: &[QWEN2_REGEX], ignore_merges: false, add_bos: false, clean_spaces: true },
    ),
    (
        &["qwen35"],
        PreTokenizerRules { regexes: &[QWEN35_REGEX], ignore_merges: false, add_bos: false, clean_spaces: false },
    ),
    (
        &["seed-coder"],
        PreTokenizerRules { regexes: &[SEED_CODER_REGEX], ignore_merges: false, add_bos: false, clean_spaces: false },
    ),
    (
        &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
        PreTokenizerRules { regexes: &[GPT4O_REGEX], ignore_merges: false, add_bos: false, clean_spaces: false },
    ),
    (
        &["deepseek-coder"],
        PreTokenizerRules {
            regexes: &["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", DEEPSEEK_CJK_REGEX, r"\p{N}"],
            ignore_merges: false,
            add_bos: false,
            clean_spaces: false,
        },
    ),
    (
        &["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"],
        PreTokenizerRules {
            regexes: &[r"\p{N}{1,3}", DEEPSEEK3_CJK_REGEX, DEEPSEEK3_REGEX],
            ignore_merges: false,
            add_bos: false,
            clean_spaces: false,
        },
    ),
];

pub(super) fn pre_tokenizer_rules(pre: Option<&str>) -> Result<&'static PreTokenizerRules> {
    let pre = pre.unwrap_or("default");
    PRE_TOKENIZERS.iter().find(|(names, _)| names.contains(&pre)).map(|(_, rules)| rules).ok_or_else(|| {
        let supported: Vec<&str> = PRE_TOKENIZERS.iter().flat_map(|(names, _)| names.iter().copied()).collect();
        tokenizer_error(format!("tokenizer.ggml.pre '{pre}' is not supported (supported: {})", supported.join(", ")))
    })
}
