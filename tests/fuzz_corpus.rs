//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same entry
//! points the fuzzers drive, on stable Rust: every input that once found new code paths,
//! and every crash the fuzzers found (kept after the fix), runs on every CI run.

use edge_classify::fuzz_targets::TARGETS;

use crate::util::root;

#[test]
fn every_committed_fuzz_input_runs_cleanly() {
    for (name, target) in TARGETS {
        let dir = root().join("fuzz/corpus").join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: empty corpus");
        for input in &inputs {
            let bytes = std::fs::read(input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(outcome.is_ok(), "{name}: {} panics", input.display());
        }
        eprintln!("{name}: {} inputs", inputs.len());
    }
}
