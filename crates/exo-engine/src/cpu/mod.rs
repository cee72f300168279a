//! The CPU backend: a shard's forward pass on our own kernels, without candle tensors.
//!
//! | module | owns |
//! |---|---|
//! | [`model`] | `CpuModel`: a shard's weights as stored in the file, scratch buffers, the forward pass |
//! | [`pool`] | `ThreadPool`: persistent workers that split each matrix product by rows |
//! | [`ops`] | RMS norm, rotary embeddings, softmax, SwiGLU on one position's vector |
//!
//! The matrix products themselves are [`crate::kernels`]: quantized weight rows against 8-bit activations,
//! with SIMD variants chosen at run time. A decode step allocates nothing: activations, quantized activations
//! and attention scores live in scratch buffers that grow only when a longer batch or sequence needs them, and
//! keys and values are written straight into the [`crate::KvCache`].

pub(crate) mod model;
pub mod ops;
pub mod pool;

pub(crate) use model::CpuModel;
pub use pool::set_threads;
