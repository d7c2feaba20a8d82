//! The `vehicle-agent` command line: `run` the agent, `call` a partner through a running one,
//! or ask it for the `result` of an earlier call (as the app that made it: the same socket
//! user, or the same `--app-token`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::uri::PathAndQuery;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;

use proto::MethodPath;
use proto::adapter::cli::{Listen, passed_sockets, shutdown_signal};
use proto::agent::v1::vehicle_agent_client::VehicleAgentClient;
use proto::agent::v1::{GetResultRequest, ResultState};
use proto::json::{Contracts, JsonError};
use proto::metadata::{IDEMPOTENCY_KEY, REQUEST_ID};
use proto::raw::RawCodec;

use crate::agent::Agent;
use crate::api::METHOD_METADATA;
use crate::config::AgentConfig;
use crate::owner::{APP_TOKEN_METADATA, Owner};

/// Exit status for a bad command line, configuration or input (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit status for a call that failed or an agent that could not run.
pub const EXIT_FAILURE: u8 = 1;

/// The vehicle agent of the connected-car platform.
#[derive(Debug, Parser)]
#[command(name = "vehicle-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the agent until SIGINT or SIGTERM (configuration: the file, then AGENT_* variables).
    ///
    /// Socket activation: when a service manager passes a listening TCP socket (systemd's
    /// LISTEN_FDS, with LISTEN_PID unset or this process), apps are served on it instead of
    /// binding local_listen, and it outlives a restart of the agent: apps connecting meanwhile
    /// wait in its backlog instead of being refused.
    Run {
        /// TOML configuration file.
        #[arg(long, env = "AGENT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Calls a partner method through a running agent and prints the response as JSON.
    Call {
        /// Full gRPC method path, e.g. /parking.v1.ParkingPayment/ListNearbyLots.
        method: String,
        /// The request message as JSON (proto3 JSON mapping).
        json: String,
        /// How long to wait for the answer, e.g. 10s or 1500ms.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
        /// Identifies one intent across retries; the partner deduplicates on it.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Names the call (sent as x-request-id), so `result` can find it later.
        #[arg(long)]
        request_id: Option<String>,
        /// Where the agent is, and as which app.
        #[command(flatten)]
        to: AgentAddress,
        /// Message types of services added by configuration.
        #[command(flatten)]
        contracts: DescriptorSets,
    },
    /// Prints what a running agent knows of an earlier call of this app: UNKNOWN, PENDING,
    /// or DONE and the outcome (the response as JSON when it succeeded). Another app's call
    /// is UNKNOWN.
    Result {
        /// The call's request id (its x-request-id).
        request_id: String,
        /// Where the agent is, and as which app.
        #[command(flatten)]
        to: AgentAddress,
        /// Message types of services added by configuration.
        #[command(flatten)]
        contracts: DescriptorSets,
    },
}

/// Where `call` and `result` find the message types of a service the agent forwards by
/// configuration alone, beside the contracts compiled in.
#[derive(Debug, Args)]
pub struct DescriptorSets {
    /// A FileDescriptorSet file describing the service's messages, as `protoc
    /// --include_imports --descriptor_set_out`, `buf build -o` or grpcio-tools write it;
    /// repeatable (in AGENT_DESCRIPTOR_SETS, separated by ':').
    #[arg(
        long = "descriptor-set",
        value_name = "FILE",
        env = "AGENT_DESCRIPTOR_SETS",
        value_delimiter = ':'
    )]
    pub files: Vec<PathBuf>,
}

impl DescriptorSets {
    /// The compiled-in contracts and every file given, or why a file is unusable.
    fn contracts(&self) -> Result<Contracts, String> {
        let mut contracts = Contracts::compiled();
        for file in &self.files {
            contracts
                .add_descriptor_set_file(file)
                .map_err(|e| format!("--descriptor-set: {e}"))?;
        }
        Ok(contracts)
    }
}

/// Says how to make a method known when the contracts lack it.
fn with_hint(e: JsonError) -> String {
    match e {
        JsonError::UnknownMethod(_) => {
            format!("{e}: for a service added by configuration, give its descriptor set with --descriptor-set FILE")
        }
        e => e.to_string(),
    }
}

/// How `call` and `result` reach a running agent, and which app they speak for.
#[derive(Debug, Args)]
pub struct AgentAddress {
    /// The agent's local gRPC endpoint over TCP.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub agent: String,
    /// The agent's Unix socket (its `local_socket`) instead of TCP; there the app is this
    /// process's user.
    #[arg(long, conflicts_with = "agent")]
    pub socket: Option<PathBuf>,
    /// On TCP, the app's own secret (16 to 1024 characters, sent as x-app-token): only calls
    /// with the same token see each other's results. Without one the call is anonymous.
    #[arg(long, env = "AGENT_APP_TOKEN", hide_env_values = true)]
    pub app_token: Option<String>,
}

/// A running agent as `call` and `result` reach it.
struct Target {
    endpoint: Endpoint,
    /// Where it is, for messages.
    name: String,
    token: Option<MetadataValue<Ascii>>,
}

impl AgentAddress {
    /// The endpoint and token, or the reason they are unusable (a usage error).
    fn target(&self) -> Result<Target, String> {
        let token = match &self.app_token {
            None => None,
            Some(token) => {
                Owner::token(token).map_err(|e| format!("--app-token: {}", e.message()))?;
                Some(MetadataValue::try_from(token.as_str()).map_err(|_| "--app-token must be printable ASCII")?)
            }
        };
        let (endpoint, name) = match &self.socket {
            Some(path) => {
                let uri = format!("unix://{}", path.display());
                let endpoint = Endpoint::from_shared(uri)
                    .map_err(|e| format!("--socket {}: not a usable path: {e}", path.display()))?;
                (endpoint, path.display().to_string())
            }
            None => {
                let endpoint = Endpoint::from_shared(self.agent.clone())
                    .map_err(|e| format!("--agent {:?} is not a URI: {e}", self.agent))?;
                (endpoint, self.agent.clone())
            }
        };
        Ok(Target { endpoint, name, token })
    }
}

impl Target {
    /// Adds the app's token, if any, to `request`.
    fn sign<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(token) = &self.token {
            request.metadata_mut().insert(APP_TOKEN_METADATA, token.clone());
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Parses the command line and runs it; the process's exit status.
pub fn main() -> ExitCode {
    // Taken while the process has one thread: it clears LISTEN_FDS, as the protocol asks.
    let activated = passed_sockets(1, "local_listen");
    // The first thing: rustls panics later if two providers are linked and none is chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Run { config } => run(config, activated),
        Command::Call {
            method,
            json,
            timeout,
            idempotency_key,
            request_id,
            to,
            contracts,
        } => call(&method, &json, &to, &contracts, timeout, [idempotency_key, request_id]),
        Command::Result {
            request_id,
            to,
            contracts,
        } => result(&request_id, &to, &contracts),
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn run(config_path: Option<PathBuf>, activated: Result<Vec<std::net::TcpListener>, String>) -> ExitCode {
    let config = match AgentConfig::load(config_path.as_deref()) {
        Ok(config) => config,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if let Err(e) = config.validate() {
        return fail(EXIT_USAGE, e);
    }
    let local_listener = match activated {
        Ok(mut sockets) => sockets.pop(),
        Err(problem) => return fail(EXIT_USAGE, format!("socket activation: {problem}")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_FAILURE, format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        let started = match local_listener {
            None => Agent::start(config).await,
            Some(listener) => {
                tracing::info!("serving apps on the socket passed by the service manager (socket activation)");
                match Listen::Activated(listener).listener().await {
                    Ok(listener) => Agent::start_on(config, listener).await,
                    Err(e) => Err(anyhow::anyhow!("socket activation: {e}")),
                }
            }
        };
        let agent = match started {
            Ok(agent) => agent,
            Err(e) => return fail(EXIT_FAILURE, format!("{e:#}")),
        };
        match shutdown_signal() {
            Ok(signal) => tracing::info!(signal = signal.await, "shutting down"),
            Err(e) => {
                agent.shutdown().await;
                return fail(EXIT_FAILURE, format!("cannot wait for signals: {e}"));
            }
        }
        agent.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// `RUST_LOG`, else `info`; without rumqttc's state machine unless `RUST_LOG` names rumqttc.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let asked = std::env::var("RUST_LOG").ok();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if asked.is_some_and(|f| f.contains("rumqttc")) {
        return filter;
    }
    // rumqttc logs a packet it does not expect (the gateway's DISCONNECT) at error level,
    // then returns it as an error, which the agent logs itself as a disconnection, with the
    // reason, at warning level: a gateway going away is not an error of the car.
    filter.add_directive("rumqttc::state=off".parse().expect("a valid directive"))
}

fn call(
    method: &str,
    json: &str,
    to: &AgentAddress,
    contracts: &DescriptorSets,
    timeout: Duration,
    ids: [Option<String>; 2],
) -> ExitCode {
    let method = match MethodPath::parse(method) {
        Ok(m) => m,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let contracts = match contracts.contracts() {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let payload = match contracts.request_from_json(&method, json) {
        Ok(p) => Bytes::from(p),
        Err(e) => return fail(EXIT_USAGE, with_hint(e)),
    };
    let [key, request_id] = ids;
    let Ok(key) = key.map(MetadataValue::try_from).transpose() else {
        return fail(EXIT_USAGE, "--idempotency-key must be printable ASCII");
    };
    let Ok(request_id) = request_id.map(MetadataValue::try_from).transpose() else {
        return fail(EXIT_USAGE, "--request-id must be printable ASCII");
    };
    let target = match to.target() {
        Ok(target) => target,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let agent = target.name.as_str();
    let endpoint = target.endpoint.clone().connect_timeout(timeout);
    let path = PathAndQuery::from_str(method.as_str()).expect("a MethodPath is a valid URI path");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_FAILURE, format!("cannot start the runtime: {e}")),
    };
    let result: Result<Bytes, Status> = runtime.block_on(async {
        let mut grpc = tonic::client::Grpc::new(endpoint.connect_lazy());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("the agent at {agent} is unreachable: {e}")))?;
        let mut request = tonic::Request::new(payload);
        // Sent as grpc-timeout: the agent gives up (and tells the gateway) at the same moment.
        request.set_timeout(timeout);
        if let Some(key) = key {
            request.metadata_mut().insert(IDEMPOTENCY_KEY, key);
        }
        if let Some(id) = request_id {
            request.metadata_mut().insert(REQUEST_ID, id);
        }
        target.sign(&mut request);
        // The agent answers by the deadline; this only guards against a hung agent.
        let slack = Duration::from_secs(2);
        match tokio::time::timeout(timeout + slack, grpc.unary(request, path, RawCodec)).await {
            Ok(response) => response.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the agent at {agent} did not answer within {}",
                { humantime_serde::re::humantime::format_duration(timeout + slack) }
            ))),
        }
    });
    match result {
        Ok(bytes) => match contracts.response_to_json(&method, &bytes) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_FAILURE, e),
        },
        Err(status) => fail(EXIT_FAILURE, describe_status(&status, agent)),
    }
}

/// `<Code>: <message>`; errors of our own transport (rather than answers) also say where
/// and the root cause, since tonic's message alone is as terse as "tcp connect error".
fn describe_status(status: &Status, agent: &str) -> String {
    let text = format!("{:?}: {}", status.code(), status.message());
    let Some(mut cause) = std::error::Error::source(status) else {
        return text;
    };
    while let Some(next) = cause.source() {
        cause = next;
    }
    format!("{text} (the agent at {agent}: {cause})")
}

fn result(request_id: &str, to: &AgentAddress, contracts: &DescriptorSets) -> ExitCode {
    if !crate::store::is_valid_request_id(request_id) {
        return fail(EXIT_USAGE, format!("{request_id:?} is not a request id"));
    }
    let contracts = match contracts.contracts() {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let target = match to.target() {
        Ok(target) => target,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let agent = target.name.as_str();
    let endpoint = target
        .endpoint
        .clone()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_FAILURE, format!("cannot start the runtime: {e}")),
    };
    let answer = runtime.block_on(async {
        let mut request = tonic::Request::new(GetResultRequest {
            request_id: request_id.to_owned(),
        });
        target.sign(&mut request);
        VehicleAgentClient::new(endpoint.connect_lazy())
            .get_result(request)
            .await
    });
    let answer = match answer {
        Ok(answer) => answer,
        Err(status) => return fail(EXIT_FAILURE, describe_status(&status, agent)),
    };
    let method = answer.metadata().get(METHOD_METADATA).and_then(|v| v.to_str().ok());
    let method = method.and_then(|m| MethodPath::parse(m).ok());
    let answer = answer.into_inner();
    let state = answer.state();
    let Some(response) = answer.response.filter(|_| state == ResultState::Done) else {
        println!("{}", state.as_str_name().trim_start_matches("RESULT_STATE_"));
        return ExitCode::SUCCESS;
    };
    match response.into_result() {
        Ok(payload) => {
            println!("DONE OK");
            match method.map(|m| contracts.response_to_json(&m, &payload)) {
                Some(Ok(json)) => println!("{json}"),
                Some(Err(JsonError::UnknownMethod(m))) => println!(
                    "({} bytes of a {m} response: give its descriptor set with --descriptor-set FILE to read it)",
                    payload.len()
                ),
                _ => println!("({} bytes of an unknown message)", payload.len()),
            }
        }
        Err(status) => println!("DONE {:?}: {}", status.code(), status.message()),
    }
    ExitCode::SUCCESS
}
