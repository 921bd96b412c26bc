//! Fuzz target: `podvm::fuzzing::auth_challenge` (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podvm::fuzzing::auth_challenge(data));
