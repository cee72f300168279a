use exo_engine::{Device, Gguf, ShardChain};
fn main() {
    let gguf = Gguf::open(std::env::var("HOME").unwrap() + "/.cache/exo/models/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
    let mut chain = ShardChain::load_whole(&gguf, 512, &Device::Cpu).unwrap();
    let t = std::time::Instant::now();
    chain.forward(&(0..128u32).map(|i| i * 31 + 100).collect::<Vec<_>>()).unwrap();
    println!("pp128 {:?}", t.elapsed());
    chain.reset();
    let t = std::time::Instant::now();
    for i in 0..32u32 { chain.forward(&[i + 100]).unwrap(); }
    println!("tg32 {:?} per token", t.elapsed() / 32);
}
