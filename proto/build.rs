//! Compiles the contracts with `protox` (pure Rust), so no system `protoc` is needed.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/vehicle/v1/envelope.proto",
        "proto/parking/v1/parking.proto",
        "proto/events/v1/events.proto",
        "proto/agent/v1/agent.proto",
        "proto/navigation/v1/navigation.proto",
        "proto/identity/v1/identity.proto",
        "proto/fleet/v1/fleet.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The encoded descriptor set lets tools translate JSON <-> protobuf by method name.
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
