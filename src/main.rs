//! The `classify` binary: everything lives in the library; see `edge_classify::cli`.

fn main() -> std::process::ExitCode {
    edge_classify::cli::main()
}
