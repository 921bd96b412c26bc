//! Fuzz target: `podvm::fuzzing::agent_protocol` (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podvm::fuzzing::agent_protocol(data));
