//! A car's `vehicle.v1.Request` envelope through the request dispatcher and router: exactly one
//! response. The body and its invariants are `gateway::fuzz::request_envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::request_envelope(data));
