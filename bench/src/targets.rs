//! The table of the targets, each checked against what the run measured.

use std::fmt::Write as _;

use crate::report::{BrokerReport, Report};

impl Report {
    fn broker(&self, name: &str) -> Option<&BrokerReport> {
        self.brokers.iter().find(|b| b.name == name)
    }

    pub(crate) fn targets_md(&self, md: &mut String) {
        let _ = writeln!(md, "## Targets from the issue\n");
        crate::report::table_head(md, "| target | measured | verdict |");
        let gw = self.broker("gateway");
        let mq = self.broker("mosquitto");
        for kind in ["full", "resumed"] {
            let storm = |b: Option<&BrokerReport>| b.and_then(|b| b.storms.iter().find(|s| s.kind == kind)).cloned();
            match (storm(gw), storm(mq)) {
                (Some(g), Some(m)) if m.connects_per_s > 0.0 && g.broker_cpu_ms_per_connect > 0.0 => {
                    let ratio = g.connects_per_s / m.connects_per_s;
                    let cpu_ratio = m.broker_cpu_ms_per_connect / g.broker_cpu_ms_per_connect;
                    let _ = writeln!(
                        md,
                        "| connect rate ({kind} handshakes) >= 2x Mosquitto | {:.0} vs {:.0} connects/s = {:.2}x (broker CPU per connect: {:.3} vs {:.3} ms = {:.2}x) | {} |",
                        g.connects_per_s,
                        m.connects_per_s,
                        ratio,
                        g.broker_cpu_ms_per_connect,
                        m.broker_cpu_ms_per_connect,
                        cpu_ratio,
                        verdict(ratio >= 2.0)
                    );
                }
                _ => {
                    let _ = writeln!(
                        md,
                        "| connect rate ({kind} handshakes) >= 2x Mosquitto | not measured | - |"
                    );
                }
            }
        }
        match (gw, mq) {
            (Some(g), Some(m)) if m.memory.per_vehicle_subscribed_kib > 0.0 => {
                let ratio = g.memory.per_vehicle_subscribed_kib / m.memory.per_vehicle_subscribed_kib;
                let _ = writeln!(
                    md,
                    "| memory per idle vehicle <= 0.75x Mosquitto | {:.1} vs {:.1} KiB = {:.2}x | {} |",
                    g.memory.per_vehicle_subscribed_kib,
                    m.memory.per_vehicle_subscribed_kib,
                    ratio,
                    verdict(ratio <= 0.75)
                );
            }
            _ => {
                let _ = writeln!(md, "| memory per idle vehicle <= 0.75x Mosquitto | not measured | - |");
            }
        }
        for r in &self.requests {
            let at_1000 = r.raw.iter().find(|t| t.load == "1000/s");
            match at_1000 {
                Some(t) => {
                    let o = &t.outcome;
                    let clean = o.errors == 0 && o.missing == 0 && o.not_sent == 0;
                    let _ = writeln!(
                        md,
                        "| request round trip p99 < 5 ms at 1000 req/s ({}) | p99 {:.1} ms (p50 {:.1} ms), {:.0} req/s answered OK, {} errors, {} unanswered | {} |",
                        r.short,
                        o.latency.p99_ms,
                        o.latency.p50_ms,
                        o.achieved_per_s,
                        o.errors,
                        o.missing + o.not_sent,
                        verdict(clean && o.latency.count > 0 && o.latency.p99_ms < 5.0)
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| request round trip p99 < 5 ms at 1000 req/s ({}) | not measured | - |",
                        r.short
                    );
                }
            }
            if let Some(t) = r.raw.iter().find(|t| t.load.starts_with("max")) {
                let _ = writeln!(
                    md,
                    "| >= 10,000 req/s sustained ({}) | {:.0} req/s (p99 {:.1} ms, {} errors; gateway {:.0} us CPU per request) | {} |",
                    r.short,
                    t.outcome.achieved_per_s,
                    t.outcome.latency.p99_ms,
                    t.outcome.errors,
                    t.broker_cpu_us_per_msg,
                    verdict(t.outcome.achieved_per_s >= 10_000.0 && t.outcome.errors == 0)
                );
            }
        }
        let during = |b: Option<&BrokerReport>, scenario: &str| {
            b.and_then(|b| b.under_storm.iter().find(|u| u.traffic.scenario.starts_with(scenario)))
                .cloned()
        };
        match (during(gw, "request"), during(gw, "publish"), during(mq, "publish")) {
            (Some(req), Some(echo), mosquitto) => {
                let served = |u: &crate::under_storm::UnderStormReport| {
                    let o = &u.traffic.outcome;
                    o.errors == 0 && o.missing == 0 && o.not_sent == 0
                };
                let _ = writeln!(
                    md,
                    "| connected cars keep being served during a connect storm | requests p99 {:.1} ms, publishes p99 {:.1} ms (Mosquitto: {}) while {} cars connect at {:.0}/s | {} |",
                    req.traffic.outcome.latency.p99_ms,
                    echo.traffic.outcome.latency.p99_ms,
                    mosquitto.as_ref().map_or("not measured".to_owned(), |m| format!(
                        "publishes p99 {:.1} ms while connecting at {:.0}/s",
                        m.traffic.outcome.latency.p99_ms, m.storm_connects_per_s
                    )),
                    req.storm_vehicles,
                    req.storm_connects_per_s,
                    verdict(served(&req) && served(&echo))
                );
            }
            _ => {
                let _ = writeln!(
                    md,
                    "| connected cars keep being served during a connect storm | not measured | - |"
                );
            }
        }
        match gw.and_then(|g| g.restart.as_ref()) {
            Some(r) => {
                let lost = r.payments.as_ref().map_or(0, |p| p.lost + p.errors);
                let payments = r.payments.as_ref().map_or("no payments made".to_owned(), |p| {
                    format!(
                        "{} payments across the crash, {} answered OK, {} lost, {} errors",
                        p.sent, p.ok, p.lost, p.errors
                    )
                });
                let mosquitto = mq
                    .and_then(|m| m.restart.as_ref())
                    .and_then(|m| m.all_back_s)
                    .map_or(String::new(), |s| format!(" (Mosquitto: {s:.1} s)"));
                let _ = writeln!(
                    md,
                    "| reconnect storm of {} vehicles back within 30 s, no lost request | {} of {} back {} after kill -9{}; {} | {} |",
                    r.vehicles,
                    r.reconnected,
                    r.vehicles,
                    r.all_back_s.map_or("(not all)".to_owned(), |s| format!("{s:.1} s")),
                    mosquitto,
                    payments,
                    match (
                        r.all_back_s.is_some_and(|s| s <= 30.0) && lost == 0,
                        r.vehicles >= 10_000
                    ) {
                        (false, _) => "**not met**",
                        (true, true) => "met",
                        (true, false) => "met at this fleet size (the target is for 10,000)",
                    }
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| reconnect storm back within 30 s, no lost request | not measured | - |"
                );
            }
        }
        if self.requests.is_empty() {
            let _ = writeln!(md, "| request round trip p99 < 5 ms at 1000 req/s | not measured | - |");
            let _ = writeln!(md, "| >= 10,000 req/s sustained | not measured | - |");
        }
        let _ = writeln!(md);
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**not met**" }
}
