//! Child processes of the bench (brokers, the adapter): started from a [`Launch`], ready when
//! a given line appears in their output, their output copied to a log file.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// How long a process may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start a broker process again after killing it.
#[derive(Debug, Clone)]
pub struct Launch {
    /// What it is, for messages.
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<std::ffi::OsString>,
    /// Environment variables set.
    pub env: Vec<(String, String)>,
    /// Environment variables removed.
    pub env_remove: Vec<String>,
    /// A line of output that says it is ready.
    pub ready: String,
}

impl Launch {
    /// The command to start it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        cmd
    }

    /// Starts it, its output going to `log`, and waits until it is ready.
    pub fn spawn(&self, log: &Path) -> Result<ChildProcess> {
        Ok(ChildProcess::spawn(&self.name, self.command(), &self.ready, log)?.0)
    }
}

/// A child process whose output goes to a log file; killed when dropped.
pub struct ChildProcess {
    /// What it is, for messages.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Option<Child>,
}

impl ChildProcess {
    /// Starts `cmd` and waits until a line of its output contains `ready` (returning that line).
    pub fn spawn(name: &str, mut cmd: Command, ready: &str, log: &Path) -> Result<(ChildProcess, String)> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let (tx, rx) = mpsc::channel::<String>();
        let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("piped stdout")),
            Box::new(child.stderr.take().expect("piped stderr")),
        ];
        for stream in streams {
            let mut file = std::fs::OpenOptions::new().append(true).open(log)?;
            let (tx, ready) = (tx.clone(), ready.to_owned());
            std::thread::spawn(move || {
                let mut reader = BufReader::with_capacity(64 * 1024, stream);
                let mut line = String::new();
                // Line by line until the ready line, then plain copies: a busy broker must
                // never wait for this thread to drain its pipe.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let _ = file.write_all(line.as_bytes());
                    if line.contains(&ready) {
                        let _ = tx.send(line.trim_end().to_owned());
                        let _ = std::io::copy(&mut reader, &mut file);
                        return;
                    }
                    line.clear();
                }
            });
        }
        drop(tx);
        let pid = child.id();
        let mut process = ChildProcess {
            name: name.to_owned(),
            pid,
            log: log.to_path_buf(),
            child: Some(child),
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => Ok((process, line)),
            Err(e) => {
                let status = process.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                process.kill();
                let tail = log_tail(log, 30);
                bail!("{name} did not become ready ({e}; exit status {status:?}); its log ends with:\n{tail}")
            }
        }
    }

    /// Kills it (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the process to stop (SIGTERM), waits up to `grace` for it to exit, then kills it.
    pub fn stop(mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let signal = |name: &str| {
            Command::new("kill")
                .arg(format!("-{name}"))
                .arg(self.pid.to_string())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !signal("TERM") {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        let (tx, rx) = mpsc::channel();
        // Detached if the process never exits: teardown must not hang the run.
        std::thread::spawn(move || {
            let _ = child.wait();
            let _ = tx.send(());
        });
        if rx.recv_timeout(grace).is_err() {
            signal("KILL");
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
