//! GGUF files for download tests: a header with some metadata and F32 tensors named like a model's (token
//! embeddings, four blocks, final norm), filled with bytes that differ everywhere, whole or split in parts.

#![allow(dead_code)]

const ALIGN: usize = 32;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// One GGUF file with string metadata `kv_str`, u16 metadata `kv_u16` and F32 `tensors` (name, elements), its data
/// a xorshift sequence from `seed`.
fn write(kv_str: &[(&str, &str)], kv_u16: &[(&str, u16)], tensors: &[(String, usize)], seed: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend(((kv_str.len() + kv_u16.len()) as u64).to_le_bytes());
    for (k, v) in kv_str {
        put_str(&mut out, k);
        out.extend(8u32.to_le_bytes());
        put_str(&mut out, v);
    }
    for (k, v) in kv_u16 {
        put_str(&mut out, k);
        out.extend(2u32.to_le_bytes());
        out.extend(v.to_le_bytes());
    }
    let mut offset = 0usize;
    for (name, n) in tensors {
        put_str(&mut out, name);
        out.extend(1u32.to_le_bytes());
        out.extend((*n as u64).to_le_bytes());
        out.extend(0u32.to_le_bytes()); // F32
        out.extend((offset as u64).to_le_bytes());
        offset += (n * 4).div_ceil(ALIGN) * ALIGN;
    }
    while out.len() % ALIGN != 0 {
        out.push(0);
    }
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    for (_, n) in tensors {
        let start = out.len();
        for _ in 0..*n {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            out.extend(state.to_le_bytes());
        }
        while (out.len() - start) % ALIGN != 0 {
            out.push(0);
        }
    }
    out
}

/// The tensors of the test model: embeddings, `blocks` blocks of `block_elems` f32 each, the final norm.
pub fn model_tensors(blocks: usize, block_elems: usize) -> Vec<(String, usize)> {
    let mut t = vec![("token_embd.weight".to_string(), 64 * 1024)];
    for b in 0..blocks {
        t.push((format!("blk.{b}.attn_q.weight"), block_elems));
    }
    t.push(("output_norm.weight".to_string(), 1024));
    t
}

/// A whole test model: about 4.3 MB.
pub fn model() -> Vec<u8> {
    write(
        &[("general.architecture", "llama"), ("general.name", "tiny test model")],
        &[],
        &model_tensors(4, 256 * 1024),
        7,
    )
}

/// The test model split in `parts.len()` files, each holding the named tensors.
pub fn split_model(parts: &[Vec<(String, usize)>]) -> Vec<Vec<u8>> {
    let count = parts.len() as u16;
    parts
        .iter()
        .enumerate()
        .map(|(i, tensors)| {
            let split = [("split.no", i as u16), ("split.count", count)];
            let kv: &[(&str, &str)] = if i == 0 { &[("general.architecture", "llama")] } else { &[] };
            write(kv, &split, tensors, 11 + i as u32)
        })
        .collect()
}
