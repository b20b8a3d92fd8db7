//! Replays every kept input under fuzz/regressions/<target>/: none may panic again.
#[test]
fn every_regression_input_decodes_without_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    for target in kobo_fuzz::TARGETS {
        for seed in target.seeds {
            (target.run)(seed.as_bytes());
        }
        for entry in std::fs::read_dir(root.join(target.name))
            .into_iter()
            .flatten()
            .flatten()
        {
            (target.run)(&std::fs::read(entry.path()).unwrap());
        }
    }
}
