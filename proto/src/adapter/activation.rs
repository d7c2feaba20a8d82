//! The service manager's side of socket activation (systemd's `LISTEN_FDS`), for tests of an
//! adapter binary: listening sockets the test bound on port 0 and keeps are handed to the child
//! as fds 3, 4, …, so the test knows the addresses before the child starts and the ports never
//! go free while it restarts. [`super::cli::passed_sockets`] is the adapter's side.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The first fd a service manager passes (`SD_LISTEN_FDS_START`).
const FIRST_PASSED_FD: i32 = 3;

/// How long an adapter may take to print where it listens.
const STARTUP_PATIENCE: Duration = Duration::from_secs(20);

/// Hands copies of `sockets` to `command` as a service manager does: fds 3, 4, … in order and
/// `LISTEN_FDS` their count, `LISTEN_PID` unset (the child is the process they are for).
pub fn pass_sockets(command: &mut Command, sockets: &[&std::net::TcpListener]) -> io::Result<()> {
    let mut mappings = Vec::with_capacity(sockets.len());
    for (child_fd, socket) in (FIRST_PASSED_FD..).zip(sockets) {
        let parent_fd: OwnedFd = socket.try_clone()?.into();
        mappings.push(FdMapping { parent_fd, child_fd });
    }
    command
        .env("LISTEN_FDS", sockets.len().to_string())
        .env_remove("LISTEN_PID")
        .fd_mappings(mappings)
        .map_err(|e| io::Error::other(format!("passing the sockets: {e}")))?;
    Ok(())
}

/// Starts the adapter at `binary` with `args`, serving on `sockets` ([`pass_sockets`]), and
/// gives it (killed when dropped) with the first line it prints, the one that says where it
/// listens. Panics, naming what failed, if it does not start or print within 20 seconds.
pub async fn start_on_passed_sockets<S: AsRef<OsStr>>(
    binary: &Path,
    args: &[S],
    sockets: &[&std::net::TcpListener],
) -> (Child, String) {
    let mut command = Command::new(binary);
    command.args(args).stdout(Stdio::piped()).kill_on_drop(true);
    pass_sockets(&mut command, sockets).expect("the sockets can be passed");
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    let mut out = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let line = tokio::time::timeout(STARTUP_PATIENCE, out.next_line())
        .await
        .expect("the adapter says where it listens")
        .expect("its stdout can be read")
        .expect("a line");
    (child, line)
}
