//! Model references from arbitrary strings (a request's `model`, `--model`, a peer's plan): parsed as a remote
//! reference, resolved by a node's store, and read as a file key (repository, revision and file separated by
//! newlines) as a peer sends one, with the keys of its split parts.
//!
//! Checked besides panics: a parsed hub reference has a valid key whose parts are valid keys and which is shown
//! as a reference to itself, and a valid key names only plain folder and file names.
#![no_main]

use std::path::Path;

use exo_fuzz::{stays_inside, store, Input};
use exo_models::{FileKey, ModelRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: { store(); }, |data: &[u8]| {
    let mut input = Input(data);
    let parts = input.u16() as usize;
    let text = String::from_utf8_lossy(input.rest());

    match ModelRef::parse_remote(&text) {
        Ok(Some(ModelRef::Hub { key, parts, .. })) => {
            assert!(key.validate().is_ok(), "{text:?} parses to the invalid key {key:?}");
            let keys = key.parts(parts);
            assert!(keys.len() == parts.max(1) || keys.len() == 1, "{parts} parts of {key:?}: {}", keys.len());
            assert!(keys.iter().all(|k| k.validate().is_ok()), "an invalid part of {key:?}");
            // A key is shown (and listed by `/v1/models`) as a reference that names it again.
            let shown = key.to_string();
            match ModelRef::parse_remote(&shown) {
                Ok(Some(ModelRef::Hub { key: again, .. })) if again == key => {}
                other => panic!("{key:?} is shown as {shown:?}, which parses to {other:?}"),
            }
        }
        Ok(Some(ModelRef::Path(path))) => panic!("a remote reference {text:?} parses to the path {path:?}"),
        Ok(None) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let _ = store().store.resolve(&text);

    let mut fields = text.splitn(3, '\n');
    let (repo, revision, file) =
        (fields.next().unwrap_or(""), fields.next().unwrap_or(""), fields.next().unwrap_or(""));
    let key = FileKey::new(repo, revision, file);
    if key.validate().is_ok() {
        for part in [&key.repo, &key.revision, &key.file] {
            assert!(stays_inside(Path::new(part)), "a valid key's {part:?} leaves its folder");
        }
        for k in key.parts(parts) {
            assert!(k.validate().is_ok(), "part {k:?} of the valid key {key:?} is invalid");
        }
        let _ = key.to_string();
    }
});
