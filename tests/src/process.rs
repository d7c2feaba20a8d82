//! Child processes for the kill -9 tests and the partner kit's: the binaries cargo built for this very test run
//! ([`built_binary!`]), started with their output watched line by line, optionally serving on
//! a listening socket the test holds and hands over as a service manager does (systemd socket
//! activation: the socket as fd 3, `LISTEN_FDS=1`), so that a process killed and started again
//! comes back on the same port, which never went free in between.
//!
//! Why built binaries, and how: a test that runs `target/debug/gateway` runs whatever was last
//! built there, stale or missing. Cargo builds a package's `[[bin]]` targets before its
//! integration tests and tells them where (`CARGO_BIN_EXE_<name>`, at compile time). So this
//! crate has thin binaries of its own (`src/bin/`) that call the real programs' `main`
//! (`gateway::cli::main`, `vehicle_agent::cli::main`, `parking_adapter::cli::main`,
//! `partner_kit::cli::main`): the same code, always freshly built, and a build failure fails the
//! test run. (Running `cargo build` from inside a test, as the
//! `escargot` crate does, would contend for the build directory's lock with the `cargo test`
//! running it, and build again with settings of its own.)

use std::process::Stdio;
use std::time::Duration;

use proto::adapter::activation::pass_sockets;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use crate::wait::within;

/// A program cargo built for this test run.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// What it is, for messages.
    pub name: &'static str,
    /// Its path, from `CARGO_BIN_EXE_*`.
    pub path: &'static str,
}

/// The [`Binary`] named `"gateway"`, `"vehicle-agent"`, `"parking-adapter"` or
/// `"partner-kit"` (`src/bin/<name>-under-test.rs`) that cargo built for this test run. A macro
/// because `CARGO_BIN_EXE_*` is set only while compiling integration tests, not this library.
#[macro_export]
macro_rules! built_binary {
    ($name:literal) => {
        $crate::process::Binary {
            name: $name,
            path: env!(concat!("CARGO_BIN_EXE_", $name, "-under-test")),
        }
    };
}

/// How long a child process may take to print what a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

/// A child process whose output is watched line by line; killed with SIGKILL when dropped.
pub struct Process {
    name: &'static str,
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Process {
    /// Starts `binary` with `args`, binding what its configuration says.
    pub fn spawn(binary: Binary, args: &[&str]) -> Process {
        Process::start(binary, args, None)
    }

    /// Starts `binary` with `args`, serving on `socket` (fd 3, `LISTEN_FDS=1`) instead of
    /// binding its configured address. The test keeps its own copy, so the port stays bound
    /// while the process is down, and connections made meanwhile wait in its backlog.
    pub fn spawn_on(binary: Binary, args: &[&str], socket: &std::net::TcpListener) -> Process {
        Process::start(binary, args, Some(socket))
    }

    fn start(binary: Binary, args: &[&str], socket: Option<&std::net::TcpListener>) -> Process {
        let mut cmd = tokio::process::Command::new(binary.path);
        cmd.args(args)
            .env("RUST_LOG", "info,rumqttd=off")
            .env("NO_COLOR", "1")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(socket) = socket {
            pass_sockets(&mut cmd, &[socket]).expect("the socket can be passed");
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {} ({}): {e}", binary.name, binary.path));
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>);
        for stream in [stdout, stderr].into_iter().flatten() {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        Process {
            name: binary.name,
            child,
            lines,
        }
    }

    /// Waits for an output line containing `needle` (and returns it).
    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        let name = self.name;
        within(
            PATIENCE,
            async {
                let mut seen = Vec::new();
                while let Some(line) = self.lines.recv().await {
                    if line.contains(needle) {
                        return line;
                    }
                    seen.push(line);
                }
                panic!(
                    "{name} ended without printing {needle:?}; it printed:\n{}",
                    seen.join("\n")
                );
            },
            &format!("{name} prints {needle:?}"),
        )
        .await
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill -9");
    }

    /// Waits for the process to exit and returns its code and everything it printed.
    pub async fn exit(mut self) -> (Option<i32>, String) {
        let status = within(PATIENCE, self.child.wait(), "the process exits")
            .await
            .expect("wait for the process");
        // Its pipes close when it exits: read them to the end.
        let mut out = Vec::new();
        while let Some(line) = within(PATIENCE, self.lines.recv(), "the rest of its output").await {
            out.push(line);
        }
        (status.code(), out.join("\n"))
    }
}
