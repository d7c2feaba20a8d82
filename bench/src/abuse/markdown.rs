//! The abuse scenario's report as Markdown: per broker, a table per abuse with the memory, what
//! the good cars saw and what the abuser got, and a verdict.

use super::*;

/// The scenario alone (`fleet-bench abuse`): its report files are `abuse.json` and `abuse.md`.
#[derive(Debug, Clone, Serialize)]
pub struct AbuseRun {
    /// When, how and where.
    #[serde(flatten)]
    pub run: RunInfo,
    /// Per broker.
    pub brokers: Vec<AbuseReport>,
    /// Things the reader must know.
    pub notes: Vec<String>,
}

impl AbuseRun {
    /// The run as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.run.markdown(&mut md, "Abusive car: gateway bounds under abuse");
        markdown(&mut md, &self.brokers);
        notes_markdown(&mut md, &self.notes);
        md
    }
}

pub(super) const MIB: f64 = 1024.0;

pub(super) fn ms_pair(s: &crate::stats::Summary) -> String {
    if s.count == 0 {
        "-".into()
    } else {
        format!("{:.1} / {:.1}", s.p50_ms, s.p99_ms)
    }
}

/// The good cars' failures in a window, in a few words.
pub(super) fn good_failures(w: &GoodWindow) -> String {
    let r = &w.requests;
    let e = &w.events;
    let refused: u64 = e.refused.values().sum();
    format!(
        "{} / {} / {} / {}",
        r.errors,
        r.missing + r.not_sent,
        e.published.saturating_sub(e.received) + refused,
        w.lost_connections
    )
}

/// The goal: at most 1 MiB more while the abuser is at it, and back within 1 MiB after it left.
pub(super) fn verdict(rss: &Rss) -> &'static str {
    if rss.growth_kib() <= 1024 && rss.left_kib() <= 1024 {
        "met"
    } else {
        "**not met**"
    }
}

/// A configuration value as the file would have it, without JSON's quotes.
pub(super) fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn rss_cells(rss: &Rss) -> String {
    format!(
        "{:.1} / {:.1} / {:.1} | {} / {}",
        rss.before_kib as f64 / MIB,
        rss.peak_kib as f64 / MIB,
        rss.after_kib as f64 / MIB,
        rss.growth_kib(),
        rss.left_kib()
    )
}

pub(super) fn abuser_cells(p: &AbusePhase) -> (String, String) {
    match (&p.abuser, &p.sockets) {
        (Some(a), _) => (
            format!(
                "{} connections ({} failed), {} packets, {:.1} MB",
                a.connects,
                a.connect_failures,
                a.packets_sent,
                a.bytes_sent as f64 / 1e6
            ),
            a.answers(),
        ),
        (None, Some(s)) => (
            format!("{} sockets opened ({} failed)", s.opened, s.open_failures),
            format!(
                "{} closed at once, {} after waiting; the car: {} of {} connected",
                s.closed_at_once, s.closed_later, s.car.connected, s.car.attempts
            ),
        ),
        (None, None) => ("-".into(), "-".into()),
    }
}

pub(super) fn count_reasons(reasons: &Reasons) -> String {
    let parts: Vec<String> = reasons.iter().map(|(reason, n)| format!("{n}× {reason}")).collect();
    parts.join("; ")
}

/// The scenario's sections of a report.
pub fn markdown(md: &mut String, reports: &[AbuseReport]) {
    for r in reports {
        let _ = writeln!(md, "\n## Abusive car: {} ({})\n", r.broker, r.label);
        let with_good = r.good_vehicles > 0;
        if with_good {
            let _ = writeln!(
                md,
                "{} well-behaved cars stay connected, making {:.0} ListNearbyLots requests/s and receiving {:.0} partner events/s \
                 (published on the partner API, acknowledged by the cars). Each abuse lasts {:.0} s at full speed, by one \
                 authenticated car that reconnects at once whenever it is disconnected; then {:.0} s without it. Latency of \
                 requests from their due time, of events from their publish time to the car reading them (p50 / p99, ms). Good \
                 cars' failures: request errors / unanswered requests / events not delivered / connections lost.\n",
                r.good_vehicles, r.request_rate, r.event_rate, r.abuse_s, r.recovery_s
            );
        } else {
            let _ = writeln!(
                md,
                "The abuser alone (no partner behind this broker, so no requests or events), {:.0} s per abuse, then {:.0} s \
                 without it.\n",
                r.abuse_s, r.recovery_s
            );
        }
        if let Some(b) = &r.bounds {
            let m = |k: &str| plain(&b["mqtt"][k]);
            let _ = writeln!(
                md,
                "Bounds in force: `mqtt.max_subscriptions` {}, `max_topic_bytes` {}, `max_qos2_awaiting_release` {}, \
                 `max_retained_messages` {} / `max_retained_bytes` {}, `max_queued_messages` {} / `max_queued_bytes` {}, \
                 `max_packets_per_second` {} (burst {}, `flood_disconnect_after` {}), `first_flight_timeout` {}, \
                 `max_pending_per_source` {}; `requests.max_per_second_per_car` {} (burst {}); \
                 `events.max_per_second_per_partner` {}.\n",
                m("max_subscriptions"),
                m("max_topic_bytes"),
                m("max_qos2_awaiting_release"),
                m("max_retained_messages"),
                m("max_retained_bytes"),
                m("max_queued_messages"),
                m("max_queued_bytes"),
                m("max_packets_per_second"),
                m("packet_burst"),
                m("flood_disconnect_after"),
                m("first_flight_timeout"),
                m("max_pending_per_source"),
                plain(&b["requests"]["max_per_second_per_car"]),
                plain(&b["requests"]["burst_per_car"]),
                plain(&b["events"]["max_per_second_per_partner"]),
            );
        }
        if with_good {
            crate::report::table_head(
                md,
                "| abuse | abuser: connections, packets sent | what it got | disconnected by the broker: seen by the abuser (reasons recorded) | RSS before / peak / after MiB | growth at peak / left after, KiB | good requests p50 / p99 | good events p50 / p99 | good failures | ≤ 1 MiB, back after |",
            );
        } else {
            crate::report::table_head(
                md,
                "| abuse | abuser: connections, packets sent | what it got | disconnected by the broker | RSS before / peak / after MiB | growth at peak / left after, KiB | ≤ 1 MiB, back after |",
            );
        }
        if let Some(b) = &r.baseline {
            let rss = Rss {
                after_kib: r.baseline_rss.end_kib,
                ..r.baseline_rss
            };
            let _ = writeln!(
                md,
                "| none (baseline) | - | - | - | {} | {} | {} | {} | - |",
                rss_cells(&rss),
                ms_pair(&b.requests.latency),
                ms_pair(&b.events.latency),
                good_failures(b)
            );
        }
        for p in &r.phases {
            let (did, got) = abuser_cells(p);
            let seen = p.abuser.as_ref().map_or(0, |a| a.disconnects);
            let disconnected = match p.disconnect_reasons.is_empty() {
                true => seen.to_string(),
                false => format!("{seen} ({})", count_reasons(&p.disconnect_reasons)),
            };
            let good = |f: &dyn Fn(&GoodWindow) -> String| p.good.as_ref().map_or("-".into(), f);
            let _ = match with_good {
                true => writeln!(
                    md,
                    "| {} | {did} | {got} | {disconnected} | {} | {} | {} | {} | {} |",
                    p.abuse.name(),
                    rss_cells(&p.rss),
                    good(&|g| ms_pair(&g.requests.latency)),
                    good(&|g| ms_pair(&g.events.latency)),
                    good(&good_failures),
                    verdict(&p.rss)
                ),
                false => writeln!(
                    md,
                    "| {} | {did} | {got} | {disconnected} | {} | {} |",
                    p.abuse.name(),
                    rss_cells(&p.rss),
                    verdict(&p.rss)
                ),
            };
        }
        let _ = writeln!(md, "\nWhat each abuse is:\n");
        for p in &r.phases {
            let _ = writeln!(md, "- `{}`: {}", p.abuse.name(), p.what);
        }
        crate::report::table_head(
            md,
            "\n| abuse | broker CPU s | log written MB | database growth MB | connections recorded | the abuser's connections open when it left, and how they ended |",
        );
        for p in &r.phases {
            let left = match (p.open_when_it_left.is_empty(), &p.abuser) {
                (false, _) => count_reasons(&p.open_when_it_left),
                (true, Some(a)) if a.connects > a.disconnects => "(not recorded)".into(),
                _ => "-".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {:.1} | {} | {} | {} | {left} |",
                p.abuse.name(),
                p.broker_cpu_s,
                p.log_bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6)),
                p.database_bytes
                    .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6)),
                if with_good {
                    p.connections_recorded.to_string()
                } else {
                    "-".into()
                },
            );
        }
        for p in &r.phases {
            let Some(s) = &p.sockets else { continue };
            let _ = writeln!(
                md,
                "\nSocket flood: {} sockets from {}, {} opened ({} could not be opened{}), {} closed by the broker at once, {} \
                 after waiting, {} still open at the end.{} A car connecting from 127.0.0.1 every second (full handshake): \
                 {} of {} connected, time to CONNACK p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}.",
                s.sockets,
                s.source,
                s.opened,
                s.open_failures,
                s.first_open_error.as_ref().map_or(String::new(), |e| format!(", first: `{e}`")),
                s.closed_at_once,
                s.closed_later,
                s.open_at_end,
                s.gateway_refusals.map_or(String::new(), |g| format!(
                    " The gateway counted {} refused for their source's quota, {} dropped at the first-flight timeout, {} \
                     refused for handshake capacity, {} failed handshakes.",
                    g.per_source, g.first_flight_timeout, g.handshake_capacity, g.failed
                )),
                s.car.connected,
                s.car.attempts,
                s.car.latency.p50_ms,
                s.car.latency.p99_ms,
                s.car.latency.max_ms,
                s.car.first_error.as_ref().map_or(String::new(), |e| format!("; first failure: `{e}`"))
            );
        }
    }
}
