//! Integration tests: the model against reference outputs, and the `classify` binary.
//! They read `../shared` (photos, golden vectors, data sets); see `util.rs`.

mod util;

mod accuracy;
mod cli;
mod loading;
mod reference;
