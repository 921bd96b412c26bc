//! Fuzz target: `podvm::fuzzing::virtio_net` (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podvm::fuzzing::virtio_net(data));
