//! The topic scheme's parsers and the session's filter checks: no filter of one car matches another
//! car's topic. The body and its invariants are `gateway::fuzz::topics`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::topics(data));
