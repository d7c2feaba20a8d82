//! A car's bytes fed to a whole gateway session (CONNECT, subscribe, publish, acks, QoS 2, ping)
//! over an in-memory stream. The body and its invariants are `gateway::fuzz::mqtt_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::mqtt_session(data));
