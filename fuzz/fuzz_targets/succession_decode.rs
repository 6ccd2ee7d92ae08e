//! cargo-fuzz entry point of `agentmesh_core_fuzz::targets::succession_decode` (the input layout
//! and what is checked are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| agentmesh_core_fuzz::targets::succession_decode::run(data)
);
