//! The gateway's TOML configuration (`gateway::fuzz::config`: parsing, validation, and that what
//! validation accepts can be used) and the agent's (parsing and the checks that need no file);
//! neither may panic.
#![no_main]

use vehicle_agent::config::AgentConfig;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway::fuzz::config(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = AgentConfig::from_toml(text);
    }
});
