//! Fuzz target: `podvm::fuzzing::layer` (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podvm::fuzzing::layer(data));
