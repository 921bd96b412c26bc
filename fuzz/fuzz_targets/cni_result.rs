//! Fuzz target: `podvm::fuzzing::cni_result` (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podvm::fuzzing::cni_result(data));
