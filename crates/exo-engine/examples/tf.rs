use exo_engine::sampler::{argmax, log_softmax};
use exo_engine::{Device, Gguf, ShardChain};
fn main() {
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("crates/exo-engine/tests/data/smollm2-135m-instruct-q4_1.json").unwrap()).unwrap();
    let gguf = Gguf::open(std::env::var("HOME").unwrap() + "/.cache/exo/models/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
    let mut chain = ShardChain::load_whole(&gguf, 512, &Device::Cpu).unwrap();
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let t = std::time::Instant::now();
    let (mut sum, mut n, mut max, mut bad) = (0.0, 0, 0.0f64, 0);
    for case in g["greedy"].as_array().unwrap() {
        chain.reset();
        let mut logits = chain.forward(&ids(&case["prompt_ids"])).unwrap();
        for (i, (&e, step)) in ids(&case["ids"]).iter().zip(case["steps"].as_array().unwrap()).enumerate() {
            let lp = log_softmax(&logits);
            let theirs = step["top"].as_array().unwrap().iter().find(|t| t[0].as_u64() == Some(e as u64)).map(|t| t[1].as_f64().unwrap()).unwrap();
            let d = (lp[e as usize] as f64 - theirs).abs();
            sum += d; n += 1; max = max.max(d);
            let mut m = logits.clone(); m[0] = f32::NEG_INFINITY; m[2] = f32::NEG_INFINITY;
            if argmax(&m) != e && step["gap"].as_f64().unwrap() >= 0.3 { bad += 1; println!("mismatch step {i}"); }
            logits = chain.forward(&[e]).unwrap();
        }
    }
    println!("steps {n} mean {:.4} max {:.4} bad {bad} in {:?}", sum / n as f64, max, t.elapsed());
}
