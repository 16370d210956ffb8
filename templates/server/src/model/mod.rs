//! Model forward passes: plain code over the kernels, one file per architecture.

pub mod llama;

pub use llama::{Llama, ModelError};
