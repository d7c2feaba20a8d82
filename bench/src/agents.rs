//! Requests through the real vehicle agent's link (`vehicle_agent::GatewayLink::call`): the
//! durable outbox, request matching and reconnect logic of the code that runs in cars, with a
//! mix of the partner's methods.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use prost::Message as _;
use proto::MethodPath;
use proto::parking::v1::{
    EndSessionRequest, EndSessionResponse, GetReceiptRequest, StartSessionRequest, StartSessionResponse,
};
use serde::Serialize;
use tokio::sync::mpsc;
use vehicle_agent::{AgentConfig, GatewayLink};

use crate::fleet::Fleet;
use crate::stats::Latencies;
use crate::traffic::{LIST_NEARBY_LOTS, MethodOutcome, ParkingRequests, TrafficOutcome};

/// Agents' links to one gateway.
pub struct Agents {
    links: Vec<GatewayLink>,
}

impl Agents {
    /// Starts one agent link per vehicle in `vehicles` (their certificates written to files, a
    /// state directory each under `state_root`) and waits until each is subscribed.
    pub async fn start(
        fleet: &Fleet,
        vehicles: std::ops::Range<usize>,
        host: &str,
        port: u16,
        state_root: &Path,
    ) -> Result<Agents> {
        let mut links = Vec::new();
        for i in vehicles {
            let files = fleet.vehicle_files(i)?;
            let mut config = AgentConfig::new(format!("{host}:{port}"), fleet.ca_file.clone(), files.cert, files.key);
            config.local_listen = "127.0.0.1:0".parse()?;
            config.state_dir = state_root.join(format!("agent-{i}"));
            config.backoff_initial = Duration::from_millis(100);
            config.backoff_max = Duration::from_secs(2);
            links.push(GatewayLink::start(&config).with_context(|| format!("agent {i}"))?);
        }
        for link in &links {
            tokio::time::timeout(Duration::from_secs(30), link.wait_connected())
                .await
                .with_context(|| format!("agent {} did not connect within 30 s", link.vin()))?;
        }
        Ok(Agents { links })
    }

    /// The agents' links.
    pub fn links(&self) -> &[GatewayLink] {
        &self.links
    }

    /// How many agents.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// A request mix at `rate` operations per second, round-robin over the agents, for
    /// `duration`: operation `k` is due at `k / rate` and drawn from `mix`; latency from each
    /// call's due time to its answer (no coordinated omission). A payment's two calls run one
    /// after the other, and an agent makes one payment at a time (the partner allows one open
    /// session per car): a payment due while the agent's last one is still running becomes a
    /// ListNearbyLots.
    pub async fn run_mix(&self, mix: &Mix, rate: f64, duration: Duration, warmup: Duration) -> Result<TrafficOutcome> {
        let (calls, mut rx) = Calls::new(Duration::from_secs(30));
        let epoch = Instant::now();
        let end = epoch + duration;
        let measure_from = epoch + warmup.min(duration / 2);
        let states: Vec<Arc<AgentState>> = self.links.iter().map(|_| Arc::default()).collect();
        let mut k = 0u64;
        loop {
            let due = epoch + Duration::from_secs_f64(k as f64 / rate);
            if due >= end || self.links.is_empty() {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let a = (k % self.links.len() as u64) as usize;
            let op = mix.draw(k / self.links.len() as u64 + a as u64 * 7919);
            tokio::spawn(operation(
                op,
                self.links[a].clone(),
                states[a].clone(),
                format!("mix-{}-{a}-{k}", std::process::id()),
                due,
                calls.clone(),
            ));
            k += 1;
        }
        let started = calls.started.clone();
        drop(calls);
        let mut out = TrafficOutcome {
            vehicles: self.links.len(),
            duration_s: duration.as_secs_f64(),
            warmup_s: (measure_from - epoch).as_secs_f64(),
            ..TrafficOutcome::default()
        };
        let mut latencies = Latencies::default();
        let mut by_method: std::collections::BTreeMap<&'static str, (Latencies, u64)> = Default::default();
        let mut measured_ok = 0u64;
        let mut last = end;
        let drain_until = end + Duration::from_secs(40);
        while let Ok(Some(call)) = tokio::time::timeout_at(drain_until.into(), rx.recv()).await {
            out.replies += 1;
            let entry = by_method.entry(call.method).or_default();
            match call.error {
                Some(e) => {
                    out.errors += 1;
                    entry.1 += 1;
                    out.first_error.get_or_insert(format!("{}: {e}", call.method));
                }
                None if call.due >= measure_from => {
                    latencies.push(call.done - call.due);
                    entry.0.push(call.done - call.due);
                    measured_ok += 1;
                    last = last.max(call.done);
                }
                None => {}
            }
        }
        out.sent = started.load(Ordering::Relaxed);
        out.missing = out.sent.saturating_sub(out.replies);
        out.achieved_per_s = measured_ok as f64 / (last - measure_from).as_secs_f64();
        out.latency = latencies.summary();
        out.per_method = by_method
            .into_iter()
            .map(|(method, (l, errors))| MethodOutcome {
                method: method.into(),
                latency: l.summary(),
                errors,
            })
            .collect();
        Ok(out)
    }

    /// Disconnects every agent.
    pub async fn shutdown(self) {
        for link in self.links {
            link.shutdown().await;
        }
    }
}

/// What the agents ask for, by weight: `lots` (ListNearbyLots, read-only), `pay` (StartSession
/// then EndSession, both through the gateway's ledger), `receipt` (GetReceipt of the agent's
/// last payment, read-only; a ListNearbyLots before the first payment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mix {
    /// Weight of ListNearbyLots.
    pub lots: u32,
    /// Weight of a payment (two calls).
    pub pay: u32,
    /// Weight of GetReceipt.
    pub receipt: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            lots: 7,
            pay: 2,
            receipt: 1,
        }
    }
}

impl std::str::FromStr for Mix {
    type Err = String;
    /// `lots=7,pay=2,receipt=1` (missing names weigh 0).
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            lots: 0,
            pay: 0,
            receipt: 0,
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=weight"))?;
            let weight: u32 = weight.parse().map_err(|e| format!("{part:?}: {e}"))?;
            match name {
                "lots" => mix.lots = weight,
                "pay" => mix.pay = weight,
                "receipt" => mix.receipt = weight,
                other => return Err(format!("{other:?} is none of lots, pay, receipt")),
            }
        }
        if mix.lots + mix.pay + mix.receipt == 0 {
            return Err("the mix needs a positive weight".into());
        }
        Ok(mix)
    }
}

/// One operation of a mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lots,
    Pay,
    Receipt,
}

impl Mix {
    /// The `n`-th operation: the weights repeat over every `lots + pay + receipt` operations.
    fn draw(&self, n: u64) -> Op {
        let slot = n % u64::from(self.lots + self.pay + self.receipt).max(1);
        if slot < u64::from(self.pay) {
            Op::Pay
        } else if slot < u64::from(self.pay + self.receipt) {
            Op::Receipt
        } else {
            Op::Lots
        }
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lots={},pay={},receipt={}", self.lots, self.pay, self.receipt)
    }
}

/// One call made through an agent.
#[derive(Debug)]
pub struct Call {
    /// Its gRPC method.
    pub method: &'static str,
    /// When it was due (latency is measured from here).
    pub due: Instant,
    /// When its answer came.
    pub done: Instant,
    /// A non-OK answer.
    pub error: Option<String>,
}

/// Where a run's calls are counted and reported. Cheap to clone; clones count together.
#[derive(Debug, Clone)]
pub struct Calls {
    tx: mpsc::UnboundedSender<Call>,
    started: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
    timeout: Duration,
}

impl Calls {
    /// Calls that give up after `timeout`, reported on the receiver.
    pub fn new(timeout: Duration) -> (Calls, mpsc::UnboundedReceiver<Call>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let calls = Calls {
            tx,
            started: Arc::default(),
            finished: Arc::default(),
            timeout,
        };
        (calls, rx)
    }

    /// Calls made so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Calls made and not answered yet.
    pub fn in_flight(&self) -> u64 {
        self.started().saturating_sub(self.finished.load(Ordering::Relaxed))
    }

    /// Calls `method` through `link`, reports the call, and returns the reply if it was OK.
    async fn call(
        &self,
        link: &GatewayLink,
        method: &'static str,
        due: Instant,
        payload: Bytes,
        key: Option<String>,
    ) -> Option<Bytes> {
        // Counted before the call, so one that never comes back shows as missing.
        self.started.fetch_add(1, Ordering::Relaxed);
        let path = MethodPath::parse(method).expect("a valid method");
        let result = link.call(&path, payload, self.timeout, key).await;
        self.finished.fetch_add(1, Ordering::Relaxed);
        let error = result
            .as_ref()
            .err()
            .map(|s| format!("{:?}: {}", s.code(), s.message()));
        let _ = self.tx.send(Call {
            method,
            due,
            done: Instant::now(),
            error,
        });
        result.ok()
    }
}

const START_SESSION: &str = "/parking.v1.ParkingPayment/StartSession";
const END_SESSION: &str = "/parking.v1.ParkingPayment/EndSession";
const GET_RECEIPT: &str = "/parking.v1.ParkingPayment/GetReceipt";

/// One parking payment as a car makes it: StartSession, then EndSession of the session it
/// opened (due as soon as it started), each through the agent's durable outbox with its own
/// idempotency key (`{key}-start`, `{key}-end`). Returns the receipt id.
pub async fn pay(link: &GatewayLink, key: &str, due: Instant, calls: &Calls) -> Option<String> {
    let started = calls
        .call(link, START_SESSION, due, start_payload(), Some(format!("{key}-start")))
        .await?;
    let session = StartSessionResponse::decode(started).ok()?.session?;
    let end = Bytes::from(
        EndSessionRequest {
            session_id: session.session_id,
        }
        .encode_to_vec(),
    );
    let ended = calls
        .call(link, END_SESSION, Instant::now(), end, Some(format!("{key}-end")))
        .await?;
    Some(EndSessionResponse::decode(ended).ok()?.receipt?.receipt_id)
}

/// What an agent remembers between operations.
#[derive(Default)]
struct AgentState {
    /// A payment is under way.
    paying: AtomicBool,
    /// The receipt of its last payment.
    receipt: std::sync::Mutex<Option<String>>,
}

/// One operation of the mix on one agent.
async fn operation(op: Op, link: GatewayLink, state: Arc<AgentState>, key: String, due: Instant, calls: Calls) {
    let receipt = state
        .receipt
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if op == Op::Pay && !state.paying.swap(true, Ordering::AcqRel) {
        if let Some(id) = pay(&link, &key, due, &calls).await {
            *state.receipt.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id);
        }
        state.paying.store(false, Ordering::Release);
    } else if let (Op::Receipt, Some(id)) = (op, receipt) {
        let payload = Bytes::from(GetReceiptRequest { receipt_id: id }.encode_to_vec());
        calls.call(&link, GET_RECEIPT, due, payload, None).await;
    } else {
        let lots = Bytes::copy_from_slice(ParkingRequests::default().payload());
        calls.call(&link, LIST_NEARBY_LOTS, due, lots, None).await;
    }
}

fn start_payload() -> Bytes {
    Bytes::from(
        StartSessionRequest {
            lot_id: "lot-bund-01".into(),
            plate: "沪A12345".into(),
        }
        .encode_to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_is_read_from_weights() {
        assert_eq!("lots=7,pay=2,receipt=1".parse::<Mix>(), Ok(Mix::default()));
        assert_eq!(
            "pay=1".parse::<Mix>(),
            Ok(Mix {
                lots: 0,
                pay: 1,
                receipt: 0
            })
        );
        assert!("lots=0".parse::<Mix>().is_err());
        assert!("coffee=1".parse::<Mix>().unwrap_err().contains("coffee"));
        assert_eq!(Mix::default().to_string(), "lots=7,pay=2,receipt=1");
    }
}
