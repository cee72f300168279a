//! Grammar-constrained sampling: a [`Grammar`] (a JSON schema, or a Lark grammar that may inline JSON schemas)
//! limits which tokens may come next, so that what a model writes always parses: structured output, tool calls.
//!
//! Built on llguidance (the engine llama.cpp and mistral.rs use): a [`Vocabulary`] gives it every token's bytes,
//! once per model; a [`Constraint`] follows one request's output, token by token, and masks the logits of the
//! tokens that would leave the grammar. Special tokens (`<|im_end|>`) are never text to a grammar: only the
//! end-of-generation tokens, once the grammar may end, and those a Lark grammar names (`<|python_tag|>`).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;

/// The whitespace a JSON answer may hold between two tokens.
pub(crate) const JSON_WHITESPACE: &str = r"(?: |\n{1,2}[ \t]{0,20})";

/// What a constrained output must match.
#[derive(Debug, Clone)]
pub struct Grammar(TopLevelGrammar);

impl Grammar {
    /// Output that is one JSON value matching `schema` (`{"type": "object"}` for any object).
    /// Whitespace between tokens is bounded (a space, or a newline and some indentation, as llama.cpp's JSON
    /// grammar has it) so that a small model cannot spend its budget on blank lines; a schema's own `x-guidance`
    /// options take precedence.
    pub fn json_schema(mut schema: serde_json::Value) -> Self {
        if let Some(object) = schema.as_object_mut() {
            object.entry("x-guidance").or_insert_with(|| serde_json::json!({ "whitespace_pattern": JSON_WHITESPACE }));
        }
        Self(TopLevelGrammar::from_json_schema(schema))
    }

    /// Output matching a grammar in llguidance's Lark syntax (which may inline schemas with `%json { ... }`).
    pub fn lark(grammar: impl Into<String>) -> Self {
        Self(TopLevelGrammar::from_lark(grammar.into()))
    }

    /// The grammar as it travels between nodes.
    pub fn to_wire(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    /// A grammar that came from [`Grammar::to_wire`] (on another node).
    pub fn from_wire(text: &str) -> Result<Self> {
        serde_json::from_str(text).map(Self).map_err(|e| EngineError::Grammar(format!("unreadable grammar: {e}")))
    }
}

/// Every token of a model as llguidance sees it: text tokens as their bytes, special tokens as their names
/// behind llguidance's marker byte. Build one per model (it takes tens of milliseconds) and share it.
pub struct Vocabulary {
    factory: ParserFactory,
    /// The model's end-of-generation tokens, sorted; `eos` is the one llguidance knows.
    eog: Arc<[u32]>,
    eos: u32,
}

/// The token environment llguidance asks for: the trie, and tokenizing (greedily on the trie: llguidance only
/// tokenizes to fast-forward forced text, which the sampler here does not do).
struct TrieEnv(TokTrie);

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.0
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.0.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

impl Vocabulary {
    pub fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let n = tokenizer.vocab_size();
        let eog: Arc<[u32]> = tokenizer.eog_ids().into();
        let eos = tokenizer
            .eos_id()
            .or_else(|| eog.first().copied())
            .ok_or_else(|| EngineError::Grammar("the model has no end-of-generation token".into()))?;
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                if tokenizer.is_special(id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tokenizer.token_text(id).unwrap_or_default().as_bytes());
                    w
                } else {
                    tokenizer.token_bytes(id, true).to_vec()
                }
            })
            .collect();
        let info = TokRxInfo::new(n as u32, eos);
        let env: TokEnv = Arc::new(TrieEnv(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| EngineError::Grammar(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory, eog, eos })
    }

    /// A constraint that follows `grammar` from the first token of the output. A grammar that does not compile
    /// (a schema feature llguidance cannot express, a Lark syntax error) is an error naming what is wrong.
    pub fn constrain(&self, grammar: &Grammar) -> Result<Constraint> {
        let parser = self.factory.create_parser(grammar.0.clone()).map_err(|e| EngineError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::Grammar(e));
        }
        Ok(Constraint { matcher, eog: self.eog.clone(), eos: self.eos })
    }
}

/// One output's progress through its grammar.
pub struct Constraint {
    matcher: Matcher,
    eog: Arc<[u32]>,
    eos: u32,
}

impl Constraint {
    /// The tokens that may come next (an end-of-generation token only, once the grammar is complete).
    pub fn allowed(&mut self) -> Result<SimpleVob> {
        let mask = self.matcher.compute_mask_or_eos().map_err(|e| EngineError::Grammar(e.to_string()))?;
        if mask.is_zero() {
            return Err(EngineError::Grammar("the grammar allows no token here".into()));
        }
        Ok(mask)
    }

    /// Sets the logits of the tokens that may not come next to minus infinity. Logits past the vocabulary (the
    /// padding rows some models have) are never allowed.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = self.allowed()?;
        self.apply(&mask, logits);
        Ok(())
    }

    /// [`Constraint::mask`] with the tokens allowed already worked out ([`Constraint::allowed`], since the last
    /// [`Constraint::accept`]).
    pub fn apply(&self, mask: &SimpleVob, logits: &mut [f32]) {
        // Wherever the grammar may end, every end-of-generation token may end it, not only the one it knows.
        let ends = mask.is_allowed(self.eos);
        let kept: Vec<f32> = if ends {
            self.eog.iter().map(|&t| logits.get(t as usize).copied().unwrap_or(f32::NEG_INFINITY)).collect()
        } else {
            Vec::new()
        };
        let words = mask.as_slice();
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = words.get(w).copied().unwrap_or(0);
            if bits == u32::MAX {
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if bits & (1 << b) == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        for (&k, &t) in kept.iter().zip(self.eog.iter()) {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = k;
            }
        }
    }

    /// Follows the grammar past `token` (one [`Constraint::mask`] allowed). An end-of-generation token ends it.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        let end = self.eog.binary_search(&token).is_ok();
        if end && self.matcher.is_stopped() {
            // The output was complete; the end token that follows is what the mask allowed.
            return Ok(());
        }
        let token = if end { self.eos } else { token };
        self.matcher.consume_token(token).map_err(|e| EngineError::Grammar(e.to_string()))
    }

    /// Whether the output is complete: nothing may follow but the end.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The test model's tokenizer (`EXO_TEST_MODEL`, or SmolLM2-135M where scripts/fetch-models.sh puts it).
    pub(crate) fn smollm() -> Tokenizer {
        let path = std::env::var_os("EXO_TEST_MODEL").map(std::path::PathBuf::from).unwrap_or_else(|| {
            let home = std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
            home.join(".cache/exo/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
        let gguf = crate::Gguf::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Tokenizer::from_gguf(&gguf).unwrap()
    }

    fn vocabulary() -> (Tokenizer, Vocabulary) {
        let t = smollm();
        let v = Vocabulary::new(&t).unwrap();
        (t, v)
    }

    /// The ids of the tokens `mask` allows.
    fn allowed_ids(c: &mut Constraint) -> Vec<u32> {
        let mask = c.allowed().unwrap();
        let mut ids = Vec::new();
        mask.iter_set_entries(|i| ids.push(i as u32));
        ids
    }

    /// Feeds `text`, tokenized as the model would, checking that the constraint allows every token of it.
    fn feed(t: &Tokenizer, c: &mut Constraint, text: &str) {
        for id in t.encode(text, false, false).unwrap() {
            let allowed = c.allowed().unwrap();
            assert!(allowed.is_allowed(id), "{:?} is refused after part of {text:?}", t.decode(&[id], true));
            c.accept(id).unwrap();
        }
    }

    #[test]
    fn a_schema_allows_only_tokens_that_keep_the_output_valid() {
        let (t, v) = vocabulary();
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": false
        });
        let mut c = v.constrain(&Grammar::json_schema(schema)).unwrap();
        // The first token must open the object: every allowed token's text starts with `{` (after spaces).
        let first = allowed_ids(&mut c);
        assert!(!first.is_empty());
        for &id in &first {
            let text = t.decode(&[id], true);
            assert!(text.trim_start().starts_with('{') || text.trim().is_empty(), "{text:?} may start the object");
        }
        let brace = t.encode("{", false, false).unwrap();
        assert!(first.contains(&brace[0]));
        let eos = t.eos_id().unwrap();
        assert!(!first.contains(&eos), "the end is refused before the object");
        feed(&t, &mut c, "{\"city\": \"Paris\", \"days\": ");
        // Inside the integer: digits, never a letter or a quote.
        let digits = allowed_ids(&mut c);
        for bad in ["x", "\"", "}"] {
            let id = t.encode(bad, false, false).unwrap()[0];
            assert!(!digits.contains(&id), "{bad:?} is refused where the integer goes");
        }
        assert!(digits.contains(&t.encode("3", false, false).unwrap()[0]));
        feed(&t, &mut c, "3}");
        assert!(c.is_complete());
        assert_eq!(allowed_ids(&mut c), vec![eos], "only the end may follow a complete object");
        c.accept(eos).unwrap();
        let Err(EngineError::Grammar(_)) = c.accept(digits[0]) else { panic!("text after the end was accepted") };
    }

    #[test]
    fn the_mask_sets_refused_logits_to_minus_infinity_and_lets_every_end_token_end() {
        let (t, v) = vocabulary();
        let mut c = v.constrain(&Grammar::lark("start: \"yes\" | \"no\"")).unwrap();
        let n = t.vocab_size() + 40; // padding rows past the vocabulary
        let mut logits = vec![0.5f32; n];
        c.mask(&mut logits).unwrap();
        let open: Vec<usize> = (0..n).filter(|&i| logits[i].is_finite()).collect();
        assert!(!open.is_empty());
        for &i in &open {
            let text = t.decode(&[i as u32], true);
            assert!("yes".starts_with(&text) || "no".starts_with(&text), "{text:?} is allowed");
        }
        assert!(open.iter().all(|&i| i < t.vocab_size()));
        feed(&t, &mut c, "no");
        let mut logits = vec![0.5f32; n];
        c.mask(&mut logits).unwrap();
        let open: Vec<u32> = (0..n as u32).filter(|&i| logits[i as usize].is_finite()).collect();
        let mut eog = t.eog_ids().to_vec();
        eog.sort_unstable();
        assert_eq!(open, eog);
    }

    #[test]
    fn special_tokens_are_not_text_to_a_grammar() {
        let (t, v) = vocabulary();
        let mut c = v.constrain(&Grammar::lark("start: /(?s:.*)/")).unwrap();
        let allowed = allowed_ids(&mut c);
        let im_start = t.encode("<|im_start|>", false, true).unwrap();
        assert_eq!(im_start.len(), 1);
        assert!(!allowed.contains(&im_start[0]), "<|im_start|> is not text");
        let mut c = v.constrain(&Grammar::lark("start: <|im_start|> \"x\"")).unwrap();
        assert_eq!(allowed_ids(&mut c), im_start, "a Lark grammar may name a special token");
    }

    #[test]
    fn text_may_come_before_a_call_but_once_a_call_opens_it_must_parse() {
        let (t, v) = vocabulary();
        let grammar = Grammar::lark(
            r#"start: TEXT | opening call
TEXT: /(?s:.+)/ & ~/(?s:.*<tool_call>.*)/
opening[lazy]: /(?s:.*)<tool_call>/
call: NL? %json {"type": "object", "properties": {"name": {"const": "get_weather"}}, "required": ["name"], "additionalProperties": false} NL? "</tool_call>"
NL: /\n/
"#,
        );
        let mut c = v.constrain(&grammar).unwrap();
        feed(&t, &mut c, "Let me look.<tool_call>\n{\"name\": \"");
        let allowed = allowed_ids(&mut c);
        for id in &allowed {
            let text = t.decode(&[*id], true);
            assert!("get_weather\"}".starts_with(&text), "{text:?} may follow inside the call");
        }
        feed(&t, &mut c, "get_weather\"}\n</tool_call>");
        assert!(c.is_complete());
        // Prose alone may end any time.
        let mut c = v.constrain(&grammar).unwrap();
        feed(&t, &mut c, "No call needed.");
        assert!(allowed_ids(&mut c).contains(&t.eos_id().unwrap()));
    }

    #[test]
    fn grammars_that_do_not_compile_are_errors_naming_the_problem() {
        let (_, v) = vocabulary();
        let Err(EngineError::Grammar(e)) = v.constrain(&Grammar::lark("start: missing_rule")) else {
            panic!("an undefined rule compiles")
        };
        assert!(e.contains("missing_rule"), "{e}");
        let schema = serde_json::json!({"type": "string", "format": "no-such-format"});
        let Err(EngineError::Grammar(e)) = v.constrain(&Grammar::json_schema(schema)) else {
            panic!("an unknown format compiles")
        };
        assert!(e.contains("no-such-format"), "{e}");
    }

    #[test]
    fn grammars_survive_the_wire() {
        let g = Grammar::json_schema(serde_json::json!({"type": "object"}));
        assert_eq!(Grammar::from_wire(&g.to_wire()).unwrap().to_wire(), g.to_wire());
        assert!(matches!(Grammar::from_wire("{not json"), Err(EngineError::Grammar(_))));
    }
}
