//! The body parsers (JSON, forms, GitHub's form payload, XML) against arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookgate::fuzzing::parse_any(data));
