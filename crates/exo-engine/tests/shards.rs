//! Sharding changes nothing but where the work happens: a model split into 2 or 3 chained shards gives the same
//! logits and tokens as the whole model, and each shard reads only its own tensors from the file.

mod common;

use exo_engine::sampler::{argmax, log_softmax};
use exo_engine::{Device, Gguf, KvType, ModelShard, Shard, ShardChain, ShardInput, ShardOutput, StageShards};

/// Bytes this thread has read through read-like system calls so far (Linux's /proc/thread-self/io `rchar`);
/// per thread because the other tests of this binary run in parallel threads.
fn bytes_read_by_thread() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io is readable");
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|v| v.trim().parse().ok()).expect("rchar")
}

#[test]
fn half_model_shard_reads_only_its_tensors() {
    let gguf = Gguf::open(common::model_path()).unwrap();
    let total_tensor_bytes: u64 = gguf.tensors.values().map(|t| t.size).sum();
    let layers = exo_engine::ModelConfig::from_gguf(&gguf).unwrap().n_layers;
    let half = layers / 2;

    // What each half must hold, from the tensor table: its blocks, plus embeddings on the first; the final norm and
    // the (tied) embeddings on the last.
    let expected = |range: std::ops::Range<usize>, extra: &[&str]| -> u64 {
        gguf.tensors
            .values()
            .filter(|t| {
                let layer = t.name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|n| n.parse().ok());
                match layer {
                    Some(l) => range.contains(&l),
                    None => extra.contains(&t.name.as_str()),
                }
            })
            .map(|t| t.size)
            .sum()
    };

    let before = bytes_read_by_thread();
    let first = ModelShard::load(&gguf, Shard::new(0, half - 1, layers).unwrap(), &Device::Cpu).unwrap();
    let read = bytes_read_by_thread() - before;
    let second = ModelShard::load(&gguf, Shard::new(half, layers - 1, layers).unwrap(), &Device::Cpu).unwrap();

    assert_eq!(first.bytes_loaded(), expected(0..half, &["token_embd.weight"]));
    // `Shard::needs_tensor`, which says what a node downloads for its layers, names exactly what each shard loads.
    let tied = !gguf.tensors.contains_key("output.weight");
    let needed =
        |s: Shard| gguf.tensors.values().filter(|t| s.needs_tensor(&t.name, tied)).map(|t| t.size).sum::<u64>();
    assert_eq!(needed(first.shard()), first.bytes_loaded());
    assert_eq!(needed(second.shard()), second.bytes_loaded());
    assert_eq!(second.bytes_loaded(), expected(half..layers, &["token_embd.weight", "output_norm.weight"]));
    // The process really read no more than that: the file is never read whole.
    assert!(read <= first.bytes_loaded() + (1 << 20), "read {read} bytes for a {} byte shard", first.bytes_loaded());
    eprintln!(
        "file tensor data {total_tensor_bytes} bytes; first half (layers 0-{}) loads {} bytes ({:.1}%), read(2) {read}; \
         second half loads {} bytes ({:.1}%)",
        half - 1,
        first.bytes_loaded(),
        100.0 * first.bytes_loaded() as f64 / total_tensor_bytes as f64,
        second.bytes_loaded(),
        100.0 * second.bytes_loaded() as f64 / total_tensor_bytes as f64,
    );
    // Together the halves read the file's tensor data once, except the tied embeddings, which both need.
    let embeddings = gguf.tensors["token_embd.weight"].size;
    assert_eq!(first.bytes_loaded() + second.bytes_loaded(), total_tensor_bytes + embeddings);
}

#[test]
fn chained_shards_match_the_whole_model() {
    let gguf = Gguf::open(common::model_path()).unwrap();
    let n = exo_engine::ModelConfig::from_gguf(&gguf).unwrap().n_layers;
    let s = |a, b| Shard::new(a, b, n).unwrap();
    let mut whole = ShardChain::load(&gguf, &[s(0, n - 1)], 256, &Device::Cpu).unwrap();
    let mut two = ShardChain::load(&gguf, &[s(0, 11), s(12, n - 1)], 256, &Device::Cpu).unwrap();
    let mut three = ShardChain::load(&gguf, &[s(0, 6), s(7, 20), s(21, n - 1)], 256, &Device::Cpu).unwrap();

    let prompt = [1u32, 504, 3575, 282, 4649, 314];
    let mut reference = whole.forward(&prompt).unwrap();
    let mut split: Vec<Vec<f32>> = [&mut two, &mut three].map(|c| c.forward(&prompt).unwrap()).into();
    let mut worst = 0.0f32;
    for step in 0..32 {
        let token = argmax(&reference);
        for (logits, chain) in split.iter_mut().zip([&mut two, &mut three]) {
            let diff = logits.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            worst = worst.max(diff);
            assert!(diff <= 1e-4, "step {step}: logits differ by {diff}");
            assert_eq!(argmax(logits), token, "step {step}");
            *logits = chain.forward(&[token]).unwrap();
        }
        reference = whole.forward(&[token]).unwrap();
    }
    eprintln!("32 greedy steps, largest logit difference between whole and split models: {worst:e}");
    assert_eq!(whole.position(), prompt.len() + 32);
}

/// A stage of a ring split over two devices of one machine (here both the CPU) computes what one shard of the same
/// layers does, for sequences that interleave, each in its own cache; its parts must follow one another.
#[test]
fn a_stage_split_over_devices_matches_one_shard_of_its_layers() {
    let gguf = Gguf::open(common::model_path()).unwrap();
    let n = exo_engine::ModelConfig::from_gguf(&gguf).unwrap().n_layers;
    let s = |a, b| Shard::new(a, b, n).unwrap();
    let head = ModelShard::load(&gguf, s(0, 9), &Device::Cpu).unwrap();
    let one = StageShards::load(&gguf, &[(s(10, n - 1), &Device::Cpu)], exo_engine::Backend::Auto).unwrap();
    let two =
        StageShards::load(&gguf, &[(s(10, 17), &Device::Cpu), (s(18, n - 1), &Device::Cpu)], exo_engine::Backend::Auto)
            .unwrap();
    assert_eq!((two.shard(), two.parts().len()), (s(10, n - 1), 2));
    assert_eq!(two.bytes_loaded(), one.bytes_loaded());
    let hidden = |out: ShardOutput| match out {
        ShardOutput::Hidden(h) => h,
        ShardOutput::Logits(_) => panic!("the first ten layers return hidden states"),
    };
    let logits = |out: ShardOutput| match out {
        ShardOutput::Logits(l) => l,
        ShardOutput::Hidden(_) => panic!("the last layer returns logits"),
    };
    let prompts: [&[u32]; 2] = [&[1, 504, 3575, 282], &[1, 9690, 314]];
    let mut head_caches = prompts.map(|_| head.new_cache(64, KvType::F16));
    let mut one_caches = prompts.map(|_| one.new_cache(64, KvType::F16));
    let mut two_caches = prompts.map(|_| two.new_cache(64, KvType::F16));
    let mut inputs: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    for step in 0..6 {
        for seq in 0..2 {
            let h = hidden(head.forward(ShardInput::Tokens(&inputs[seq]), &mut head_caches[seq]).unwrap());
            let want = logits(one.forward(ShardInput::Hidden(h.clone()), &mut one_caches[seq]).unwrap());
            let got = logits(two.forward(ShardInput::Hidden(h), &mut two_caches[seq]).unwrap());
            let diff = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff <= 1e-4, "step {step}, sequence {seq}: logits differ by {diff}");
            assert_eq!(two_caches[seq].len(), one_caches[seq].len());
            inputs[seq] = vec![argmax(&want)];
        }
    }
    // A stage is the cache it was made for, and its parts follow one another.
    let err = two.forward(ShardInput::HiddenBytes(&[0; 4 * 576]), &mut one_caches[0]).err().unwrap();
    assert!(err.to_string().contains("a cache of 1 parts for a stage of 2"), "{err}");
    let gap = StageShards::load(&gguf, &[(s(10, 12), &Device::Cpu), (s(14, n - 1), &Device::Cpu)], Default::default());
    assert!(gap.err().unwrap().to_string().contains("does not start at layer 13"));
}

#[test]
fn cache_truncation_replays_identically() {
    let gguf = Gguf::open(common::model_path()).unwrap();
    let mut chain = ShardChain::load_whole(&gguf, 128, &Device::Cpu).unwrap();
    let prompt = [504u32, 3575, 282, 4649, 314];
    chain.forward(&prompt).unwrap();
    let first = chain.forward(&[7042]).unwrap();
    chain.forward(&[30]).unwrap();
    chain.forward(&[198]).unwrap();
    // Rewind to just after the prompt and feed the same token: the same logits come back.
    chain.truncate(prompt.len()).unwrap();
    assert_eq!(chain.position(), prompt.len());
    let again = chain.forward(&[7042]).unwrap();
    let diff = first.iter().zip(&again).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff <= 1e-5, "{diff}");
}

#[test]
fn shard_inputs_are_checked() {
    let gguf = Gguf::open(common::model_path()).unwrap();
    let n = exo_engine::ModelConfig::from_gguf(&gguf).unwrap().n_layers;
    assert!(Shard::new(5, 4, n).is_err());
    assert!(Shard::new(0, n, n).is_err());
    let second = ModelShard::load(&gguf, Shard::new(10, n - 1, n).unwrap(), &Device::Cpu).unwrap();
    let mut cache = second.new_cache(16, KvType::default());
    let e = second.forward(exo_engine::ShardInput::Tokens(&[1, 2]), &mut cache).unwrap_err();
    assert!(e.to_string().contains("takes hidden states"), "{e}");
    let first = ModelShard::load(&gguf, Shard::new(0, 9, n).unwrap(), &Device::Cpu).unwrap();
    let mut cache = first.new_cache(16, KvType::default());
    let e = first.forward(exo_engine::ShardInput::Tokens(&[999_999]), &mut cache).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    assert!(ModelShard::load(&gguf, Shard::new(0, 9, n + 1).unwrap(), &Device::Cpu).is_err());
    // A cache belongs to the backend of the shard that made it.
    let on_candle =
        ModelShard::load_with(&gguf, Shard::new(0, 9, n).unwrap(), &Device::Cpu, exo_engine::Backend::Candle).unwrap();
    assert_eq!((first.backend(), on_candle.backend()), ("cpu", "candle"));
    let mut candle_cache = on_candle.new_cache(16, KvType::default());
    let e = first.forward(exo_engine::ShardInput::Tokens(&[1]), &mut candle_cache).unwrap_err();
    assert!(e.to_string().contains("made for another backend"), "{e}");
    let mut cpu_cache = first.new_cache(16, KvType::default());
    let e = on_candle.forward(exo_engine::ShardInput::Tokens(&[1]), &mut cpu_cache).unwrap_err();
    assert!(e.to_string().contains("made for another backend"), "{e}");
    // Hidden states as bytes: only after layer 0, and only whole positions.
    let e = first.forward(exo_engine::ShardInput::HiddenBytes(&[0; 8]), &mut first.new_cache(16, KvType::default()));
    assert!(e.unwrap_err().to_string().contains("takes token ids"));
    let e = second.forward(exo_engine::ShardInput::HiddenBytes(&[0; 7]), &mut second.new_cache(16, KvType::default()));
    assert!(e.unwrap_err().to_string().contains("7 bytes of hidden states are not whole positions"));
    let mut chain = ShardChain::load_whole(&gguf, 4, &Device::Cpu).unwrap();
    let e = chain.forward(&[1, 2, 3, 4, 5]).unwrap_err();
    assert!(matches!(e, exo_engine::EngineError::ContextOverflow { needed: 5, context: 4 }), "{e}");
}

#[test]
fn generation_refuses_empty_and_overlong_prompts() {
    use exo_engine::generation::{generate, GenerationParams};
    use exo_engine::sampler::SamplingParams;
    let gguf = Gguf::open(common::model_path()).unwrap();
    let tokenizer = exo_engine::tokenizer::Tokenizer::from_gguf(&gguf).unwrap();
    let mut chain = ShardChain::load_whole(&gguf, 8, &Device::Cpu).unwrap();
    let params = GenerationParams {
        max_tokens: 4,
        sampling: SamplingParams::greedy(),
        stop: vec![],
        ignore_eos: false,
        preserved: vec![],
    };
    let e = generate(&mut chain, &tokenizer, &[], &params, |_| {}).unwrap_err();
    assert!(e.to_string().contains("prompt is empty"), "{e}");
    let e = generate(&mut chain, &tokenizer, &[504; 8], &params, |_| {}).unwrap_err();
    assert!(matches!(e, exo_engine::EngineError::PromptTooLong { prompt: 8, context: 8 }), "{e}");
    // A prompt that fits generates until the context is full, then finishes with "length": positions 6 and 7 take
    // the first two new tokens, and the third is sampled from position 7's logits.
    let params = GenerationParams { max_tokens: 100, ignore_eos: true, ..params };
    let report = generate(&mut chain, &tokenizer, &[504; 6], &params, |_| {}).unwrap();
    assert_eq!((report.generated_tokens, report.finish_reason.as_str()), (3, "length"));
}

/// A prompt longer than one prefill chunk goes through in chunks; where the prompt is cut must not matter: the
/// logits after it equal, bit for bit, those of the same prompt fed in two arbitrary parts, in small batches, and
/// through a 2-shard chain.
#[test]
fn long_prompts_are_chunked_without_changing_the_result() {
    let gguf = Gguf::open(common::model_path()).unwrap();
    let n = exo_engine::ModelConfig::from_gguf(&gguf).unwrap().n_layers;
    let prompt: Vec<u32> = (0..exo_engine::chain::PREFILL_CHUNK as u32 + 77).map(|i| (i * 7919 + 13) % 49152).collect();
    let mut chain = ShardChain::load_whole(&gguf, 1024, &Device::Cpu).unwrap();
    let chunked = chain.forward(&prompt).unwrap();
    assert_eq!(chain.position(), prompt.len());
    chain.reset();
    chain.forward(&prompt[..200]).unwrap();
    let parts = chain.forward(&prompt[200..]).unwrap();
    let mut split = ShardChain::load(
        &gguf,
        &[Shard::new(0, 11, n).unwrap(), Shard::new(12, n - 1, n).unwrap()],
        1024,
        &Device::Cpu,
    )
    .unwrap();
    let two_shards = split.forward(&prompt).unwrap();
    // Bit for bit: a ring cuts prompts finer than one node does, and its answers must be the same.
    for (what, other) in [("two parts", &parts), ("two shards", &two_shards)] {
        let diff = chunked.iter().zip(other).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(chunked == *other, "{what}: largest logit difference {diff}");
    }
    // And in batches of 32, 7 and 2.
    chain.reset();
    let mut rest = &prompt[..];
    let mut small = Vec::new();
    for size in [32, 7, 2].iter().cycle() {
        let (now, later) = rest.split_at((*size).min(rest.len()));
        small = chain.forward(now).unwrap();
        rest = later;
        if rest.is_empty() {
            break;
        }
    }
    assert!(small == chunked, "batches of 32, 7 and 2 change the logits");
}

/// Prefill attention over hundreds of positions (the CPU kernels' blocked path: whole blocks, a partial last block,
/// and a second batch that starts at a non-zero position) against candle's own attention (`softmax(QKᵀ)V` as
/// tensor operations, f32 KV cache) on the same prompt: the same top token, and log-probabilities of candle's top
/// ten tokens within the engines' usual quantization differences.
#[test]
fn blocked_prefill_attention_matches_candle() {
    let gguf = Gguf::open(common::model_path()).unwrap();
    let n = exo_engine::ModelConfig::from_gguf(&gguf).unwrap().n_layers;
    let whole = [Shard::new(0, n - 1, n).unwrap()];
    let prompt: Vec<u32> = (0..400u32).map(|i| (i * 7919 + 13) % 49152).collect();
    let mut ours =
        ShardChain::load_with(&gguf, &whole, 1024, &Device::Cpu, KvType::F16, exo_engine::Backend::Cpu).unwrap();
    assert_eq!(ours.shards()[0].backend(), "cpu");
    ours.forward(&prompt[..200]).unwrap();
    let ours = log_softmax(&ours.forward(&prompt[200..]).unwrap());
    let mut candle =
        ShardChain::load_with(&gguf, &whole, 1024, &Device::Cpu, KvType::F32, exo_engine::Backend::Candle).unwrap();
    let theirs = log_softmax(&candle.forward(&prompt).unwrap());
    assert_eq!(argmax(&ours), argmax(&theirs));
    let mut top: Vec<usize> = (0..theirs.len()).collect();
    top.sort_by(|&a, &b| theirs[b].total_cmp(&theirs[a]));
    let diffs: Vec<f32> = top[..10].iter().map(|&i| (ours[i] - theirs[i]).abs()).collect();
    let worst = diffs.iter().copied().fold(0.0, f32::max);
    eprintln!("top-10 |Δ log-probability| vs candle: {diffs:.3?}");
    assert!(worst < 0.3, "largest difference {worst} in {diffs:?}");
}

/// Hidden states handed on as little-endian bytes (as they cross the network) give the second shard exactly the
/// logits that the tensor gives, on both backends.
#[test]
fn hidden_states_as_bytes_equal_the_tensor() {
    use exo_engine::{Backend, ShardInput, ShardOutput};
    let gguf = Gguf::open(common::model_path()).unwrap();
    let n = exo_engine::ModelConfig::from_gguf(&gguf).unwrap().n_layers;
    let first = ModelShard::load(&gguf, Shard::new(0, 9, n).unwrap(), &Device::Cpu).unwrap();
    let ShardOutput::Hidden(hidden) =
        first.forward(ShardInput::Tokens(&[1, 504, 3575, 282]), &mut first.new_cache(16, KvType::default())).unwrap()
    else {
        panic!("the first shard gave logits")
    };
    let bytes: Vec<u8> =
        hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect();
    for backend in [Backend::Cpu, Backend::Candle] {
        let second = ModelShard::load_with(&gguf, Shard::new(10, n - 1, n).unwrap(), &Device::Cpu, backend).unwrap();
        let logits = |input| match second.forward(input, &mut second.new_cache(16, KvType::default())).unwrap() {
            ShardOutput::Logits(l) => l,
            ShardOutput::Hidden(_) => panic!("the last shard gave hidden states"),
        };
        assert_eq!(logits(ShardInput::HiddenBytes(&bytes)), logits(ShardInput::Hidden(hidden.clone())), "{backend:?}");
    }
}
