//! Replays every committed input of every fuzz target through podvm's ordinary decoding code
//! (`podvm::fuzzing`), without libFuzzer: the seed corpus (`corpus/<target>/`) and the inputs
//! that once crashed a target (`regressions/<target>/`, each named after what it found). A
//! regression that comes back panics here with the target's oracle message.

use std::path::Path;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind);
    let mut replayed = 0;
    for (name, target) in podvm::fuzzing::TARGETS {
        for file in inputs(&root.join(name)) {
            let data = std::fs::read(&file).expect("input");
            println!("{name}: {}", file.display());
            target(&data);
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn every_seed_input_passes_its_target() {
    let replayed = replay("corpus");
    assert!(replayed >= podvm::fuzzing::TARGETS.len(), "a seed per target at least");
}

#[test]
fn every_input_that_once_crashed_a_target_passes_it_now() {
    replay("regressions");
}

#[test]
fn every_target_has_a_seed_corpus_and_a_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in podvm::fuzzing::TARGETS {
        assert!(
            !inputs(&root.join("corpus").join(name)).is_empty(),
            "{name} has no seed corpus"
        );
        assert!(
            root.join("fuzz_targets").join(format!("{name}.rs")).is_file(),
            "{name} has no fuzz target"
        );
    }
}
