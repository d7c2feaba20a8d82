//! A car's `vehicle.v1.EventAck` through event delivery's acknowledgement path. The body and its
//! invariants are `gateway::fuzz::event_ack`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::event_ack(data));
