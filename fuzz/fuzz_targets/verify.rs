//! Every scheme's verifier against arbitrary headers, body and query.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookgate::fuzzing::verify_any(data));
