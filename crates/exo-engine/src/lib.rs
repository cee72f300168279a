//! exo's inference engine: everything needed to run a contiguous range of a GGUF model's layers on one machine.
//!
//! | module | owns |
//! |---|---|
//! | [`gguf`] | the file format: metadata, tensor table, reading tensor bytes by offset |
//! | [`tokenizer`] | text ↔ token ids from the vocabulary stored in the GGUF file |
//! | [`chat_template`] | rendering chat messages with the model's own Jinja template |
//! | [`sampler`] | choosing the next token from logits |
//! | [`stop`] | stop strings across token boundaries |
//! | [`config`] | a model's hyper-parameters from its metadata |
//! | [`weights`] | reading named tensors into candle tensors |
//! | [`shard`] | `Shard` (a layer range) and `ModelShard` (its weights and forward pass on a backend) |
//! | [`kernels`] | the CPU matrix kernels: quantized dot products, SIMD variants chosen at run time |
//! | [`cpu`] | the CPU backend: forward pass on the kernels, thread pool |
//! | [`calibration`] | this machine's measured speed: a quantized matrix-vector product and memory reads |
//! | [`candle_backend`] | the candle backend: GPUs (CUDA, Metal), and the CPU on request |
//! | [`kv_cache`] | `KvCache`: one sequence's keys and values for a shard's layers |
//! | `moe` | routing tokens to the experts of a mixture-of-experts layer |
//! | [`devices`] | the devices a shard runs on: `--devices` lists, this machine's GPUs, their memory |
//! | `cuda_libs` | loading the CUDA driver and libraries at run time (`cuda` feature) |
//! | [`chain`] | `ShardChain`: consecutive shards run in one process |
//! | [`generation`] | one request's decoding state: sampling, stops, streaming text |
//! | [`constraint`] | grammar-constrained sampling (llguidance): JSON schemas and Lark grammars over a vocabulary |
//! | [`tool_calls`] | tool calls in the model's own format: the prompt, the grammar, reading calls back out |
//! | [`reasoning`] | a thinking model's `<think>` reasoning apart from its answer, as the text streams |
//!
//! The engine knows nothing of networks, async runtimes or HTTP.

pub mod calibration;
#[cfg(all(feature = "metal", not(target_os = "macos")))]
compile_error!("the `metal` feature builds on macOS only (candle's Metal backend needs Apple's frameworks)");

pub mod candle_backend;
pub mod chain;
pub mod chat_template;
pub mod config;
pub mod constraint;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda_libs;
pub mod devices;
pub mod error;
pub mod generation;
pub mod gguf;
pub mod kernels;
pub mod kv_cache;
mod moe;
pub mod reasoning;
pub mod sampler;
pub mod shard;
pub mod stage;
pub mod stop;
pub mod tokenizer;
pub mod tool_calls;
pub mod weights;

pub use candle_core::{Device, Tensor};
pub use chain::ShardChain;
pub use config::{Architecture, ModelConfig};
pub use devices::{DeviceInfo, DeviceSelection, FoundDevice};
pub use error::{EngineError, Result};
pub use gguf::Gguf;
pub use kv_cache::{KvCache, KvType};
pub use shard::{Backend, ModelShard, Shard, ShardInput, ShardOutput};
pub use stage::{StageCache, StageShards};
