//! The command-line pieces every adapter binary needs: the TLS files given together or not at
//! all, sockets passed by a service manager (systemd socket activation, `LISTEN_FDS`) or
//! addresses to bind, SIGINT/SIGTERM for a graceful stop, and exit status 64 for a command
//! line that cannot be used.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tonic::transport::ServerTlsConfig;

use super::mtls_config;

/// Exit status for a command line that cannot be used (sysexits.h EX_USAGE).
pub const EX_USAGE: u8 = 64;

/// What an adapter binary starts with: its command line, and the sockets a service manager
/// passed it, in order (empty when none were).
#[cfg(feature = "adapter-binary")]
#[derive(Debug)]
pub struct Started<A> {
    /// The parsed command line.
    pub args: A,
    /// The passed listening sockets ([`passed_sockets`]).
    pub passed: Vec<std::net::TcpListener>,
}

/// Starts the adapter binary `binary`, in the order every one needs: the sockets a service
/// manager passed (at most `max_sockets`, serving `what_they_serve`; taken first, while the
/// process has one thread), ring as rustls' one crypto provider, logs on stderr (`RUST_LOG`,
/// default `info`; no colour codes unless stderr is a terminal), then its command line. `Err` is
/// the exit code to return at once: success after `--help` or `--version`, [`EX_USAGE`] for a
/// command line clap cannot read or sockets it cannot use.
#[cfg(feature = "adapter-binary")]
pub fn start<A: clap::Parser>(
    binary: &str,
    max_sockets: usize,
    what_they_serve: &str,
) -> Result<Started<A>, std::process::ExitCode> {
    use std::io::IsTerminal as _;
    use std::process::ExitCode;

    let passed = passed_sockets(max_sockets, what_they_serve);
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Logs go to stderr so that stdout carries only the "listening" lines scripts wait for.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = A::try_parse().map_err(|e| {
        let _ = e.print();
        // --help and --version print to stdout and are no error.
        if e.use_stderr() {
            ExitCode::from(EX_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })?;
    let passed = passed.map_err(|problem| usage_error(binary, problem))?;
    Ok(Started { args, passed })
}

/// The `--cert`, `--key` and `--client-ca` options of an adapter binary (`#[command(flatten)]`).
#[cfg(feature = "adapter-binary")]
#[derive(Debug, Clone, clap::Args)]
pub struct TlsOptions {
    /// PEM certificate the adapter presents to the gateway.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// PEM CA that the gateway's client certificate must chain to, and that signs nothing else
    /// (gateway-clients-ca.pem in the development PKI); calls must also carry role gateway-client.
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
}

#[cfg(feature = "adapter-binary")]
impl TlsOptions {
    /// The files, all three or none ([`TlsFiles::from_options`]).
    pub fn files(&self) -> Result<Option<TlsFiles>, String> {
        TlsFiles::from_options(self.cert.as_deref(), self.key.as_deref(), self.client_ca.as_deref())
    }
}

/// Prints `problem` as `binary: problem` and gives [`EX_USAGE`], for a command line that parsed
/// but cannot be used.
#[cfg(feature = "adapter-binary")]
pub fn usage_error(binary: &str, problem: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("{binary}: {problem}");
    std::process::ExitCode::from(EX_USAGE)
}

/// Runs `serving` on a multi-threaded tokio runtime until it ends; an error (or a runtime that
/// cannot start) is printed as `binary: error` with its causes, and the exit code says which.
#[cfg(feature = "adapter-binary")]
pub fn run_to_exit<E: std::fmt::Display>(
    binary: &str,
    serving: impl Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    use std::process::ExitCode;

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{binary}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serving) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The certificate and key an adapter presents, and the CA its callers' certificates must
/// chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate the adapter presents.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA that client certificates must chain to.
    pub client_ca: PathBuf,
}

impl TlsFiles {
    /// The `--cert`, `--key` and `--client-ca` options: all three for mTLS, none for plaintext;
    /// anything else is an error to print before exiting with [`EX_USAGE`].
    pub fn from_options(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<TlsFiles>, String> {
        match (cert, key, client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some(TlsFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
                client_ca: client_ca.to_owned(),
            })),
            (None, None, None) => Ok(None),
            _ => {
                Err("--cert, --key and --client-ca go together: give all three for mTLS, or none for plaintext".into())
            }
        }
    }

    /// Reads the three files into an mTLS config ([`mtls_config`]).
    pub async fn server_config(&self) -> io::Result<ServerTlsConfig> {
        self.server_config_for(&self.client_ca).await
    }

    /// The same certificate and key, trusting callers of `client_ca` instead (another port of
    /// the same adapter, served to other clients).
    pub async fn server_config_for(&self, client_ca: &Path) -> io::Result<ServerTlsConfig> {
        Ok(mtls_config(
            &read_text(&self.cert).await?,
            &read_text(&self.key).await?,
            &read_text(client_ca).await?,
        ))
    }
}

/// The text file at `path`, read off the async workers; the error names the file.
pub async fn read_text(path: &Path) -> io::Result<String> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))
}

/// Where to serve: an address to bind, or a socket a service manager passed.
#[derive(Debug)]
pub enum Listen {
    /// Bind this address.
    Bind(SocketAddr),
    /// Serve on this already listening socket.
    Activated(std::net::TcpListener),
}

impl Listen {
    /// The listener to serve on; the error says which address or socket failed.
    pub async fn listener(self) -> io::Result<tokio::net::TcpListener> {
        match self {
            Listen::Bind(addr) => tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))),
            Listen::Activated(socket) => socket
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(socket))
                .map_err(|e| io::Error::new(e.kind(), format!("the passed socket: {e}"))),
        }
    }
}

/// The listening sockets a service manager passed (`LISTEN_FDS`, with `LISTEN_PID` unset or
/// this process), in order; empty when none were. More than `max` is an error naming
/// `what_they_serve` (e.g. "the service, then the lot port"), to print before exiting with
/// [`EX_USAGE`].
///
/// Call it first thing in `main`, while the process has one thread: it clears `LISTEN_FDS`, as
/// the protocol asks.
pub fn passed_sockets(max: usize, what_they_serve: &str) -> Result<Vec<std::net::TcpListener>, String> {
    let mut activated = listenfd::ListenFd::from_env();
    let count = activated.len();
    if count > max {
        return Err(format!(
            "LISTEN_FDS={count}: at most {max} socket(s): {what_they_serve}"
        ));
    }
    (0..count)
        .map(|index| match activated.take_tcp_listener(index) {
            Ok(Some(socket)) => Ok(socket),
            Ok(None) => Err(format!("passed socket {index} was already taken")),
            Err(e) => Err(format!("the passed socket (fd {}): {e}", 3 + index)),
        })
        .collect()
}

/// Completes on SIGINT or SIGTERM (Ctrl-C elsewhere) with the signal's name; in-flight calls
/// then finish before exit. Register it before announcing the address, so that a supervisor
/// which stops the adapter right after reading the line still gets a graceful shutdown.
#[cfg(unix)]
pub fn shutdown_signal() -> io::Result<impl Future<Output = &'static str> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}

/// Completes on Ctrl-C; in-flight calls then finish before exit.
#[cfg(not(unix))]
pub fn shutdown_signal() -> io::Result<impl Future<Output = &'static str> + Send + 'static> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            "Ctrl-C"
        } else {
            std::future::pending().await
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_go_together() {
        let (c, k, a) = (Path::new("c.pem"), Path::new("k.pem"), Path::new("ca.pem"));
        assert_eq!(TlsFiles::from_options(None, None, None), Ok(None));
        assert!(TlsFiles::from_options(Some(c), Some(k), Some(a)).unwrap().is_some());
        let error = TlsFiles::from_options(Some(c), None, Some(a)).unwrap_err();
        assert!(error.contains("go together"), "{error}");
    }

    #[tokio::test]
    async fn a_missing_file_is_named() {
        let files = TlsFiles::from_options(
            Some(Path::new("/nonexistent/c.pem")),
            Some(Path::new("k.pem")),
            Some(Path::new("ca.pem")),
        )
        .unwrap()
        .unwrap();
        let error = files.server_config().await.unwrap_err();
        assert!(error.to_string().contains("cannot read /nonexistent/c.pem"), "{error}");
    }
}
