//! A partner's `events.v1.PublishRequest` through the partner API's checks. The body and its
//! invariants are `gateway::fuzz::partner_event`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::partner_event(data));
