//! MQTT framing alone: the gateway's packet reader and its reserved-bits checks, however the bytes
//! are split. The body and its invariants are `gateway::fuzz::mqtt_packet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz::mqtt_packet(data));
