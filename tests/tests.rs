//! Integration tests: the model against reference outputs, and the `classify` binary.
//! They read `../shared` (photos, golden vectors, data sets); see `util.rs`.

mod server_util;
mod util;

mod accuracy;
mod browser;
mod catsdogs;
mod cli;
mod deploy;
mod efficientnet;
mod faults;
mod fuzz_corpus;
mod loading;
mod own_classes;
mod pets;
mod quantize;
mod reference;
mod server;
