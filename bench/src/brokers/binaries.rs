//! The workspace's binaries the bench starts: where they are, building them first, and the
//! command-line options of the scenarios that start only the gateway.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Where a gateway-only scenario's gateway binary comes from, and whether its work files stay.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayBinArgs {
    /// Do not run `cargo build` for the gateway first.
    #[arg(long)]
    pub no_build: bool,
    /// Gateway binary (default: next to this executable).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Keep the temporary directory (certificates, configs, the gateway's logs and database).
    #[arg(long)]
    pub keep_work: bool,
}

impl GatewayBinArgs {
    /// The gateway binary these options name, built first unless told not to.
    pub fn binary(&self) -> Result<PathBuf> {
        gateway_binary(self.no_build, self.gateway_bin.as_deref())
    }
}

/// The gateway's release binary: `given`, or the workspace's own, built first unless `no_build`.
pub fn gateway_binary(no_build: bool, given: Option<&Path>) -> Result<PathBuf> {
    if !no_build && given.is_none() {
        build_workspace_binaries()?;
    }
    let bin = match given {
        Some(p) => p.to_path_buf(),
        None => workspace_binary("gateway")?,
    };
    anyhow::ensure!(
        bin.exists(),
        "{} does not exist (build it or pass --gateway-bin)",
        bin.display()
    );
    Ok(bin)
}

/// A binary of this workspace built with the same profile as the running executable: next to
/// it for the bench binary (`target/release/`), one level up for test binaries (`deps/`).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    Ok(profile_dir()?.join(name))
}

/// The running executable's profile directory, e.g. `target/release/`.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Builds the gateway and the parking adapter with the profile of the running executable, so
/// that the figures are always those of the current source.
pub fn build_workspace_binaries() -> Result<()> {
    let dir = profile_dir()?;
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    eprintln!("building gateway and parking-adapter (profile {profile}) ...");
    let status = Command::new(cargo)
        .args([
            "build",
            "--profile",
            &profile,
            "-p",
            "gateway",
            "-p",
            "parking-adapter",
            "--manifest-path",
        ])
        .arg(&manifest)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build of gateway and parking-adapter failed ({status})");
    }
    Ok(())
}
