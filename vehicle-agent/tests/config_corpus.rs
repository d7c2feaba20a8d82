//! The agent's half of the `config` fuzz target: every file of `fuzz/corpus/config/` is read as
//! the agent's configuration, which must not panic. (The gateway's tests replay the other half.)

use std::path::PathBuf;

use vehicle_agent::config::AgentConfig;

#[test]
fn the_config_corpus_is_read_without_panicking() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| {
            std::str::from_utf8(&bytes)
                .ok()
                .map(|text| AgentConfig::from_toml(text).map(|_| ()).map_err(|e| e.to_string()))
        });
        let Ok(outcome) = outcome else {
            panic!("reading {} as the agent's configuration panicked", path.display());
        };
        if path.ends_with("seed-agent") {
            // The fuzzer starts from a configuration the agent accepts.
            assert_eq!(outcome, Some(Ok(())), "{}", path.display());
        }
        files += 1;
    }
    assert!(files > 0, "the config corpus is empty");
}
