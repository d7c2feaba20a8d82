//! The run's report as Markdown: settings, each broker's storms, memory and traffic, the
//! request runs and the scenarios, in tables.

use super::*;

impl Report {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let s = &self.settings;
        self.run.markdown(&mut md, "Fleet benchmark: gateway vs Mosquitto");
        if let Some(ms) = self.disk_fsync_ms {
            let _ = writeln!(
                md,
                "- disk holding the gateway's SQLite database: {ms:.2} ms per 4 KiB write + fsync (mean of 20)"
            );
        }
        let _ = writeln!(
            md,
            "- fleet: {} vehicles, each with its own ECDSA P-256 certificate ({} issued in {:.2} s); {} loopback address(es); \
             {} connection attempts in flight, {}; keep-alive {} s",
            s.vehicles,
            self.certificates.vehicles,
            self.certificates.issue_s,
            s.loopback_addrs,
            if s.max_inflight == 0 {
                "unbounded".to_owned()
            } else {
                s.max_inflight.to_string()
            },
            if s.connect_rate > 0.0 {
                format!("{:.0} vehicles started per second", s.connect_rate)
            } else {
                "all started at once".to_owned()
            },
            s.keep_alive_s
        );
        let _ = writeln!(
            md,
            "- traffic: {} active vehicles (the rest stay connected and idle), {:.0} s per run of which the first {:.1} s are warm-up; \
             latency from each message's due time (open loop) or send time (closed loop, {} in flight)",
            s.active, s.duration_s, s.warmup_s, s.rates.closed_in_flight
        );
        if !s.gateway_overrides.is_empty() {
            let _ = writeln!(
                md,
                "- the traffic gateways run with `{}` (their few active cars stand in for a fleet; the per-car rates \
                 would otherwise throttle and refuse the closed-loop runs); the abusive-car scenario's gateway runs with \
                 its own settings, listed in its section",
                s.gateway_overrides.join("`, `")
            );
        }
        let _ = writeln!(md);

        self.targets_md(&mut md);

        let _ = writeln!(md, "## Connect storms (MQTT 3.1.1 over mTLS, TLS 1.3)\n");
        table_head(
            &mut md,
            "| broker | handshake | connected | failed attempts | connects/s | p50 ms | p99 ms | max ms | full / resumed | broker CPU s | broker CPU ms/connect | load-gen CPU s | wall s |",
        );
        for b in &self.brokers {
            for st in &b.storms {
                let _ = writeln!(
                    md,
                    "| {} | {} | {}/{} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} / {} | {:.2} | {:.3} | {:.2} | {:.2} |",
                    b.name,
                    st.kind,
                    st.connected,
                    st.vehicles,
                    st.failed_attempts,
                    st.connects_per_s,
                    st.time_to_connack.p50_ms,
                    st.time_to_connack.p99_ms,
                    st.time_to_connack.max_ms,
                    st.full_handshakes,
                    st.resumed_handshakes,
                    st.cpu.broker_cpu_s,
                    st.broker_cpu_ms_per_connect,
                    st.cpu.loadgen_cpu_s,
                    st.cpu.wall_s
                );
            }
        }
        for b in &self.brokers {
            for st in &b.storms {
                if let Some(e) = &st.first_error {
                    let _ = writeln!(md, "\n{} {} storm, first failure: `{}`", b.name, st.kind, e);
                }
            }
        }

        let _ = writeln!(md, "\n## Memory per idle connected vehicle (broker RSS)\n");
        table_head(
            &mut md,
            "| broker | vehicles | baseline MiB | connected MiB | + subscribed MiB | after disconnect MiB | reconnected MiB | threads | KiB/vehicle connected | KiB/vehicle connected + subscribed |",
        );
        for b in &self.brokers {
            let m = &b.memory;
            let mib = |k: u64| k as f64 / 1024.0;
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.1} |",
                b.name,
                m.vehicles,
                mib(m.baseline_kib),
                mib(m.connected_kib),
                mib(m.subscribed_kib),
                mib(m.after_disconnect_kib),
                mib(m.reconnected_kib),
                m.threads_connected,
                m.per_vehicle_connected_kib,
                m.per_vehicle_subscribed_kib
            );
        }
        for b in &self.brokers {
            if !b.memory.rounds_kib.is_empty() {
                let rounds: Vec<String> = b
                    .memory
                    .rounds_kib
                    .iter()
                    .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                    .collect();
                let _ = writeln!(
                    md,
                    "\n{}: RSS after each further disconnect + reconnect of all {} vehicles: {} MiB.",
                    b.name,
                    b.memory.vehicles,
                    rounds.join(", ")
                );
            }
            if let Some(s) = b.settle_after_disconnect_s {
                let _ = writeln!(
                    md,
                    "\n{}: busy for {:.1} s after all {} vehicles disconnected (the resumed storm started after that).",
                    b.name, s, b.memory.vehicles
                );
            }
        }
        for b in &self.brokers {
            if let Some(r) = &b.registry {
                let _ = writeln!(
                    md,
                    "\nGateway connection log after the storms: {} of {} sessions of the resumed storm recorded {:.1} s after it ended{}.",
                    r.recorded,
                    r.expected,
                    r.lag_s,
                    if r.caught_up { "" } else { " (gave up waiting)" }
                );
            }
        }

        let _ = writeln!(
            md,
            "\n## Publish round trip, QoS 1 (car publishes to a topic it subscribes to)\n"
        );
        traffic_table(
            &mut md,
            self.brokers
                .iter()
                .flat_map(|b| b.echo.iter().map(move |t| (b.name.as_str(), t))),
        );

        for r in &self.requests {
            let _ = writeln!(
                md,
                "\n## Full requests car -> gateway -> parking adapter -> car: {}\n",
                r.setup
            );
            traffic_table(&mut md, r.raw.iter().chain(r.agents.iter()).map(|t| ("gateway", t)));
        }

        let under: Vec<_> = self.brokers.iter().flat_map(|b| b.under_storm.clone()).collect();
        crate::under_storm::markdown(&mut md, &under);
        let restarts: Vec<_> = self.brokers.iter().filter_map(|b| b.restart.clone()).collect();
        crate::restart::markdown(&mut md, &restarts);
        crate::abuse::markdown(&mut md, &self.abuse);

        let lost: Vec<String> = self
            .brokers
            .iter()
            .filter(|b| b.lost_connections > 0)
            .map(|b| {
                format!(
                    "{}: {} ({})",
                    b.name,
                    b.lost_connections,
                    b.first_loss.clone().unwrap_or_default()
                )
            })
            .collect();
        if !lost.is_empty() {
            let _ = writeln!(md, "\nConnections lost while idle: {}", lost.join("; "));
        }
        notes_markdown(&mut md, &self.notes);
        md
    }
}

pub(super) fn traffic_table<'a>(md: &mut String, rows: impl Iterator<Item = (&'a str, &'a TrafficReport)>) {
    table_head(
        md,
        "| broker | scenario | load | vehicles | sent | answered OK/s | errors | unanswered | p50 ms | p90 ms | p99 ms | max ms | broker CPU us/msg | load-gen CPU us/msg | adapter CPU s | wall s |",
    );
    let mut errors = Vec::new();
    let mut mixed = Vec::new();
    for (broker, t) in rows {
        if !t.outcome.per_method.is_empty() {
            mixed.push(t);
        }
        let o = &t.outcome;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {} | {:.1} |",
            broker,
            t.scenario,
            t.load,
            o.vehicles,
            o.sent,
            o.achieved_per_s,
            o.errors,
            o.missing + o.not_sent,
            o.latency.p50_ms,
            o.latency.p90_ms,
            o.latency.p99_ms,
            o.latency.max_ms,
            t.broker_cpu_us_per_msg,
            t.loadgen_cpu_us_per_msg,
            t.cpu.adapter_cpu_s.map_or("-".into(), |s| format!("{s:.2}")),
            t.cpu.wall_s
        );
        if let Some(e) = &o.first_error {
            errors.push(format!("{broker} {} {}: first error `{e}`", t.scenario, t.load));
        }
    }
    for e in errors {
        let _ = writeln!(md, "\n{e}");
    }
    for t in &mixed {
        let parts: Vec<String> = t
            .outcome
            .per_method
            .iter()
            .map(|m| {
                format!(
                    "`{}` {} calls, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                    m.method.rsplit('/').next().unwrap_or(&m.method),
                    m.latency.count,
                    m.latency.p50_ms,
                    m.latency.p99_ms,
                    m.errors
                )
            })
            .collect();
        let _ = writeln!(md, "\n{} {}: {}.", t.scenario, t.load, parts.join("; "));
    }
}
