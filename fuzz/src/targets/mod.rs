//! The fuzz targets' bodies, one module per parser or state machine. The cargo-fuzz binaries
//! (`fuzz_targets/*.rs`) call them, and so does `tests/corpus_replay.rs`, which replays the
//! committed corpora and known reproducers in an ordinary `cargo test` (no libFuzzer needed).

pub mod bundle_decode;
pub mod envelope_decode;
pub mod group_open;
pub mod keyfile_load;
pub mod payload_decode;
pub mod session_import;
pub mod succession_decode;
pub mod unseal_live_session;
