//! Requests through the real vehicle agent's link (`vehicle_agent::GatewayLink::call`): the
//! durable outbox, request matching and reconnect logic of the code that runs in cars.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use proto::MethodPath;
use tokio::sync::mpsc;
use vehicle_agent::{AgentConfig, GatewayLink};

use crate::fleet::Fleet;
use crate::stats::Latencies;
use crate::traffic::{LIST_NEARBY_LOTS, ParkingRequests, TrafficOutcome};

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

    /// `ListNearbyLots` calls at `rate` per second for `duration`, round-robin over the agents;
    /// latency from each call's due time to its answer.
    pub async fn run_rate(&self, rate: f64, duration: Duration, warmup: Duration) -> Result<TrafficOutcome> {
        let method = MethodPath::parse(LIST_NEARBY_LOTS).map_err(|e| anyhow::anyhow!("{e}"))?;
        let payload = Bytes::copy_from_slice(ParkingRequests::default().payload());
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Instant, Option<String>)>();
        let epoch = Instant::now();
        let end = epoch + duration;
        let measure_from = epoch + warmup.min(duration / 2);
        let mut out = TrafficOutcome {
            vehicles: self.links.len(),
            duration_s: duration.as_secs_f64(),
            warmup_s: (measure_from - epoch).as_secs_f64(),
            ..TrafficOutcome::default()
        };
        let mut k = 0u64;
        loop {
            let due = epoch + Duration::from_secs_f64(k as f64 / rate);
            if due >= end || self.links.is_empty() {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let link = self.links[(k % self.links.len() as u64) as usize].clone();
            let (method, payload, tx) = (method.clone(), payload.clone(), tx.clone());
            tokio::spawn(async move {
                let result = link.call(&method, payload, Duration::from_secs(30), None).await;
                let _ = tx.send((
                    due,
                    Instant::now(),
                    result.err().map(|s| format!("{:?}: {}", s.code(), s.message())),
                ));
            });
            out.sent += 1;
            k += 1;
        }
        drop(tx);
        let mut latencies = Latencies::default();
        let mut measured_ok = 0u64;
        let mut last = end;
        let drain_until = Instant::now() + Duration::from_secs(40);
        while let Ok(Some((due, done, error))) = tokio::time::timeout_at(drain_until.into(), rx.recv()).await {
            out.replies += 1;
            match error {
                Some(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(e);
                }
                None => {
                    if due >= measure_from {
                        latencies.push(done - due);
                        measured_ok += 1;
                        last = last.max(done);
                    }
                }
            }
        }
        out.missing = out.sent - out.replies;
        out.achieved_per_s = measured_ok as f64 / (last - measure_from).as_secs_f64();
        out.latency = latencies.summary();
        Ok(out)
    }

    /// Disconnects every agent.
    pub async fn shutdown(self) {
        for link in self.links {
            link.shutdown().await;
        }
    }
}
