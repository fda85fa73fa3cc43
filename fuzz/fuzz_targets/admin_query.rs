//! The admin API's query strings (`/v1/events`, `/v1/replay`, `since`) against arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookgate::fuzzing::admin_query(data));
