//! Mosquitto as the broker compared: found or installed, its version, its configuration (an
//! mTLS listener with the fleet's certificates) and its process.

use super::*;

/// Makes sure Mosquitto is installed: returns its path, installing Debian's package if
/// `install` is set. The second value says what was done, for the report.
pub fn ensure_mosquitto(path: &Path, install: bool) -> (Option<PathBuf>, Option<String>) {
    if path.exists() {
        return (Some(path.to_path_buf()), None);
    }
    if !install {
        return (
            None,
            Some(format!("{} is missing; Mosquitto was not measured", path.display())),
        );
    }
    eprintln!("{} is missing: apt-get install -y mosquitto ...", path.display());
    let apt = |args: &[&str]| Command::new("apt-get").args(args).status().is_ok_and(|s| s.success());
    let installed = apt(&["install", "-y", "mosquitto"]) || (apt(&["update"]) && apt(&["install", "-y", "mosquitto"]));
    if installed && path.exists() {
        (
            Some(path.to_path_buf()),
            Some("Mosquitto was installed by the bench (apt-get install -y mosquitto)".into()),
        )
    } else {
        (
            None,
            Some("Mosquitto is missing and apt-get install -y mosquitto failed; Mosquitto was not measured".into()),
        )
    }
}

/// `mosquitto -h`'s first line, e.g. "mosquitto version 2.0.11".
pub fn mosquitto_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "mosquitto (version unknown)".into())
}

/// Mosquitto's configuration: an mTLS listener with the fleet's server certificate, cars
/// identified by their certificate, no persistence.
pub fn mosquitto_conf(fleet: &Fleet, listen: SocketAddr) -> String {
    format!(
        "# written by fleet-bench\n\
         listener {port} {ip}\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         allow_anonymous true\n\
         max_keepalive 65535\n\
         max_connections -1\n\
         persistence false\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         connection_messages true\n\
         {user}",
        // As root, Mosquitto drops to the `mosquitto` user before reading the key, which
        // lives in our private temporary directory: stay who we are.
        user = if running_as_root() { "user root\n" } else { "" },
        port = listen.port(),
        ip = listen.ip(),
        ca = fleet.ca_file.display(),
        cert = fleet.server.cert.display(),
        key = fleet.server.key.display(),
    )
}

pub(super) fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(str::to_owned))
        .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// Starts Mosquitto with [`mosquitto_conf`].
pub fn start_mosquitto(bin: &Path, fleet: &Fleet, dir: &Path, hosts: &[IpAddr]) -> Result<Broker> {
    let ip = listen_ip(hosts);
    let port = free_port(hosts[0])?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(&conf, mosquitto_conf(fleet, SocketAddr::new(ip, port)))?;
    let launch = Launch {
        name: "mosquitto".into(),
        program: bin.to_path_buf(),
        args: vec!["-c".into(), conf.into_os_string()],
        env: Vec::new(),
        env_remove: Vec::new(),
        ready: " running".into(),
    };
    let log = dir.join("mosquitto.log");
    let process = launch.spawn(&log)?;
    Ok(Broker {
        kind: BrokerKind::Mosquitto,
        label: mosquitto_version(bin),
        pid: process.pid,
        port,
        partner_api: None,
        storage_url: None,
        config: None,
        log: Some(log),
        handle: Handle::Process(process),
        relaunch: Relaunch::Process(launch),
    })
}
