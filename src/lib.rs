//! edge-classify: image classification as a native serverless function.
//!
//! - [`manifest`] describes the models; [`weights`] reads and verifies their files (f32 and
//!   int8), which [`quantize`] makes;
//! - [`models`] defines the networks as candle modules;
//! - [`plan`] compiles them for fast inference on the [`kernels`];
//! - [`preprocess`] turns image bytes into input tensors;
//! - [`classifier`] ties one model's network, labels and input together;
//! - [`predictions`] formats answers;
//! - [`server`] is the OpenFaaS-compatible HTTP function;
//! - [`train`] trains the dogs-vs-cats models and [`eval`] scores any model on folders;
//! - [`bench`] is the on-device benchmark;
//! - [`cli`] is the `classify` command line;
//! - [`fuzz_targets`] drives every parser of outside input for the fuzzers.

pub mod bench;
pub mod classifier;
pub mod cli;
pub mod eval;
pub mod files;
pub mod fuzz_targets;
pub mod kernels;
pub mod labels;
pub mod manifest;
pub mod memory;
pub mod models;
pub mod plan;
pub mod predictions;
pub mod preprocess;
pub mod quantize;
pub mod server;
pub mod train;
pub mod weights;
