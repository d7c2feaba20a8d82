//! The well-behaved cars of the abuse scenario: connected and subscribed, making requests and
//! acknowledging partner events in windows (warm-up, baseline, each abuse, each recovery), and
//! why the gateway ended a car's sessions, from its connection log.

use super::*;

/// The well-behaved cars: connected, subscribed to `resp` and `events`, making requests and
/// acknowledging the events a partner pushes to them.
pub(super) struct GoodFleet {
    swarm: Swarm,
    cars: Vec<usize>,
    requests: ParkingRequests,
    events: PartnerEvents,
    rate: f64,
    /// Windows whose event figures are still to compute (once every event had its chance
    /// to arrive), with where they go.
    pending: Vec<(Slot, Duration, Duration)>,
}

/// Where a window's figures go.
#[derive(Clone, Copy)]
pub(super) enum Slot {
    Warmup,
    Baseline,
    Abuse(usize),
    Recovery(usize),
}

impl GoodFleet {
    pub(super) async fn connect(
        fleet: &Fleet,
        broker: &Broker,
        n: usize,
        host: IpAddr,
        plan: &AbusePlan,
        say: &impl Fn(String),
    ) -> Result<GoodFleet> {
        let mut swarm = Swarm::new(fleet.vehicles[..n].iter().map(|v| v.vin.clone()).collect());
        let configs = fleet.client_configs(0..n, &HandshakeCounter::default())?;
        let target = Target {
            hosts: vec![host],
            port: broker.port,
        };
        let outcome = swarm.storm(&configs, &target, &plan.storm).await?;
        if outcome.connected != n {
            bail!(
                "{} of {n} good cars connected: {:?}",
                outcome.connected,
                outcome.first_error
            );
        }
        let cars = swarm.connected();
        let granted = swarm
            .subscribe(&cars, |vin| {
                vec![proto::topics::responses(vin), proto::topics::events(vin)]
            })
            .await?;
        if granted != n {
            bail!("{granted} of {n} good cars were granted their subscriptions");
        }
        let api = broker.partner_api.context("the gateway's partner API is not enabled")?;
        say(format!(
            "good cars: {n} connected and subscribed; {:.0} requests/s, {:.0} events/s from the partner",
            plan.request_rate, plan.event_rate
        ));
        let client = partner::client(fleet, api).await?;
        let vins = cars.iter().map(|&i| swarm.vin(i).clone()).collect();
        Ok(GoodFleet {
            events: PartnerEvents::start(client, vins, plan.event_rate),
            swarm,
            cars,
            requests: ParkingRequests::default(),
            rate: plan.request_rate,
            pending: Vec::new(),
        })
    }

    /// Requests and events for `duration`; the events' figures come in [`GoodFleet::finish`].
    pub(super) async fn window(&mut self, duration: Duration, slot: Slot) -> GoodWindow {
        let lost = self.swarm.lost;
        let from = self.events.now();
        let events = &self.events;
        let schedule = Schedule {
            load: Load::Rate(self.rate),
            duration,
            warmup: Duration::ZERO,
        };
        let requests = traffic::run_with(
            &mut self.swarm,
            &self.cars,
            &self.requests,
            schedule,
            &mut |swarm, m| events.on_message(swarm, m),
        )
        .await;
        self.pending.push((slot, from, from + duration));
        GoodWindow {
            requests,
            events: EventWindow::default(),
            lost_connections: self.swarm.lost - lost,
        }
    }

    /// Stops the partner, lets the last events arrive, fills in every window's event figures
    /// and disconnects the cars.
    pub(super) async fn finish(&mut self, report: &mut AbuseReport) {
        self.events.stop().await;
        // Events published last still arrive; read them (and acknowledge them) for a while.
        let until = Instant::now() + Duration::from_secs(2);
        let events = &self.events;
        while let Ok(Some((i, event))) = tokio::time::timeout_at(until.into(), self.swarm.next()).await {
            if let crate::swarm::Event::Message { topic, payload, at } = event {
                events.on_message(
                    &self.swarm,
                    traffic::Other {
                        vehicle: i,
                        topic: &topic,
                        payload: &payload,
                        at,
                    },
                );
            }
        }
        for &(slot, from, to) in &self.pending {
            let window = self.events.window(from, to);
            let target = match slot {
                Slot::Warmup => None,
                Slot::Baseline => report.baseline.as_mut(),
                Slot::Abuse(i) => report.phases.get_mut(i).and_then(|p| p.good.as_mut()),
                Slot::Recovery(i) => report.phases.get_mut(i).and_then(|p| p.recovery.as_mut()),
            };
            if let Some(w) = target {
                w.events = window;
            }
        }
        let _ = self.swarm.disconnect_all().await;
    }
}

/// How the abuser's connections ended, by abuse window (unix ms, from the abuser's start to its
/// departure), from the gateway's connection log: a connection belongs to the window it began in,
/// and either ended before the abuser left (the gateway's doing) or was open when it left.
/// Read once every session of the abuser is recorded as closed (or 15 s have passed).
pub(super) async fn session_ends(broker: &Broker, vin: &proto::Vin, windows: &[(i64, i64)]) -> Vec<(Reasons, Reasons)> {
    let mut out = vec![(Reasons::new(), Reasons::new()); windows.len()];
    let Some(store) = broker.registry().await else {
        return out;
    };
    let started = Instant::now();
    let sessions = loop {
        let sessions = store.connections_of(vin, u32::MAX).await.unwrap_or_default();
        if sessions.iter().all(|s| s.disconnected_at_ms.is_some()) || started.elapsed() > Duration::from_secs(15) {
            break sessions;
        }
        // The log is written in batches: poll the gateway's database until it has caught up.
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for s in sessions {
        let (Some(at), Some(reason)) = (s.disconnected_at_ms, s.disconnect_reason) else {
            continue;
        };
        let Some(k) = windows
            .iter()
            .position(|(from, to)| (*from..*to).contains(&s.connection.connected_at_ms))
        else {
            continue;
        };
        let (during, left) = &mut out[k];
        let reasons = if at < windows[k].1 { during } else { left };
        *reasons.entry(reason).or_default() += 1;
    }
    if broker.is_process() {
        store.close().await;
    }
    out
}
