//! The journal's record decoders and its commit log scanner against arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookgate::fuzzing::journal_records(data));
