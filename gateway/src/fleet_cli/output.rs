//! What `gateway fleet` prints: aligned tables with local RFC 3339 times for people, or with
//! `--json` each response in the proto3 JSON mapping, one object per line, for scripts.

use std::fmt::Write as _;

use chrono::{Local, SecondsFormat};
use prost::Message;
use proto::MethodPath;
use proto::fleet::v1 as fleet;
use proto::fleet::v1::timeline_entry::What;
use proto::json::Contracts;

use super::Failure;
use crate::logsafe::printable_whole;

/// Prints responses as tables or as JSON lines.
pub(super) struct Printer {
    json: bool,
}

impl Printer {
    /// JSON lines if `json`, tables otherwise.
    pub(super) fn new(json: bool) -> Printer {
        Printer { json }
    }

    /// Prints `message`, the answer of `FleetOps/{method}`: as one JSON line, or as the text
    /// `human` makes of it.
    fn answer<M: Message>(&self, method: &str, message: &M, human: impl FnOnce(&M) -> String) -> Result<(), Failure> {
        match self.json {
            true => println!("{}", json_line(method, message)?),
            false => print!("{}", human(message)),
        }
        Ok(())
    }

    pub(super) fn sessions(&self, r: &fleet::ListSessionsResponse) -> Result<(), Failure> {
        self.answer("ListSessions", r, sessions)
    }

    pub(super) fn session_change(&self, c: &fleet::SessionChange) -> Result<(), Failure> {
        self.answer("WatchSessions", c, session_change)
    }

    pub(super) fn timeline_page(&self, page: &fleet::TimelinePage, first: bool) -> Result<(), Failure> {
        // Both timelines answer a TimelinePage: either method decodes it.
        self.answer("VehicleTimeline", page, |page| timeline_page(page, first))
    }

    pub(super) fn partners(&self, r: &fleet::PartnerHealthResponse) -> Result<(), Failure> {
        self.answer("PartnerHealth", r, partners)
    }

    pub(super) fn kicked(&self, vin: &str, r: &fleet::KickVehicleResponse) -> Result<(), Failure> {
        self.answer("KickVehicle", r, |r| match r.was_connected {
            true => format!("{vin}: session ended (the car may reconnect; `revoke` keeps it out)\n"),
            false => format!("{vin}: no live session on this gateway node\n"),
        })
    }

    pub(super) fn revoked(&self, vin: &str, r: &fleet::RevokeVehicleResponse) -> Result<(), Failure> {
        self.answer("RevokeVehicle", r, |r| {
            let session = match r.was_connected {
                true => "its live session was ended",
                false => "it had no live session on this node",
            };
            format!("{vin}: revoked at {}; {session}\n", time(r.revoked_at_ms))
        })
    }

    pub(super) fn revocations(&self, r: &fleet::ListRevocationsResponse) -> Result<(), Failure> {
        self.answer("ListRevocations", r, revocations)
    }

    /// A customer, the answer of `method`.
    pub(super) fn customer(&self, method: &str, c: &fleet::Customer) -> Result<(), Failure> {
        self.answer(method, c, customer)
    }

    pub(super) fn dashboard_link(&self, r: &fleet::DashboardLink) -> Result<(), Failure> {
        self.answer("CreateDashboardLink", r, |r| {
            // On stderr, so that `xdg-open "$(gateway fleet dashboard-link)"` gets the URL alone.
            eprintln!(
                "open it once, before {}, in a browser trusting the gateway's CA",
                time(r.expires_at_ms)
            );
            format!("{}\n", r.url)
        })
    }
}

fn sessions(r: &fleet::ListSessionsResponse) -> String {
    let mut live = Table::new(&["VIN", "NODE", "REMOTE", "AGENT", "CONNECTED"]);
    for s in &r.live {
        live.row([
            s.vin.clone(),
            s.node.clone(),
            s.remote_addr.clone(),
            s.agent_version.clone(),
            time(s.connected_at_ms),
        ]);
    }
    let mut text = match r.live.len() {
        0 => "no live sessions\n".to_owned(),
        n => format!("{}{n} live sessions (of {})\n", live.render(), r.live_total),
    };
    if !r.recently_closed.is_empty() {
        let mut closed = Table::new(&["VIN", "NODE", "CONNECTED", "DISCONNECTED", "REASON"]);
        for s in &r.recently_closed {
            closed.row([
                s.vin.clone(),
                s.node.clone(),
                time(s.connected_at_ms),
                time(s.disconnected_at_ms),
                s.disconnect_reason.clone(),
            ]);
        }
        let _ = writeln!(text, "\nrecently closed:\n{}", closed.render().trim_end());
    }
    text
}

fn session_change(c: &fleet::SessionChange) -> String {
    let s = c.session.clone().unwrap_or_default();
    let line = match fleet::session_change::Kind::try_from(c.kind) {
        Ok(fleet::session_change::Kind::Connected) => format!(
            "{}  connected     {}  node={} remote={} agent={}",
            time(s.connected_at_ms),
            s.vin,
            s.node,
            s.remote_addr,
            s.agent_version
        ),
        Ok(fleet::session_change::Kind::Disconnected) => format!(
            "{}  disconnected  {}  node={} reason={}",
            time(s.disconnected_at_ms),
            s.vin,
            s.node,
            s.disconnect_reason
        ),
        _ => format!("(unknown change {})  {}", c.kind, s.vin),
    };
    format!("{}\n", printable_whole(&line))
}

fn timeline_page(page: &fleet::TimelinePage, first: bool) -> String {
    if first && page.entries.is_empty() {
        return "no entries in this range\n".to_owned();
    }
    let mut table = Table::new(&["TIME", "VIN", "WHAT", "DETAIL"]);
    for e in &page.entries {
        let (what, detail) = describe_entry(e.what.as_ref());
        table.row([time_ms(e.at_ms), e.vin.clone(), what.to_owned(), detail]);
    }
    let text = table.render();
    // Later pages continue the first one's table, without its header again.
    match first {
        true => text,
        false => text.split_once('\n').map_or("", |(_, rest)| rest).to_owned(),
    }
}

fn partners(r: &fleet::PartnerHealthResponse) -> String {
    if r.partners.is_empty() {
        return "no partner services configured\n".to_owned();
    }
    let mut table = Table::new(&[
        "SERVICE",
        "REQ/S",
        "P50",
        "P99",
        "ERRORS",
        "BREAKER",
        "IN FLIGHT",
        "SHED",
        "REFUSED",
    ]);
    for p in &r.partners {
        table.row([
            p.service.clone(),
            format!("{:.2}", p.requests_per_second),
            seconds(p.p50_latency_seconds),
            seconds(p.p99_latency_seconds),
            format!("{:.1}%", p.error_rate * 100.0),
            p.breaker.clone(),
            p.calls_in_flight.to_string(),
            p.shed_total.to_string(),
            p.refused_total.to_string(),
        ]);
    }
    format!("{}over the last {} s\n", table.render(), r.window_seconds)
}

fn revocations(r: &fleet::ListRevocationsResponse) -> String {
    let mut table = Table::new(&["VIN", "REVOKED", "BY", "REASON"]);
    for v in &r.revocations {
        table.row([
            v.vin.clone(),
            time(v.revoked_at_ms),
            v.revoked_by.clone(),
            v.reason.clone(),
        ]);
    }
    match r.revocations.len() {
        0 => "no revoked vehicles\n".to_owned(),
        _ => table.render(),
    }
}

fn customer(c: &fleet::Customer) -> String {
    let mut text = format!(
        "customer {}  {:?}  created {}\n",
        c.id,
        c.display_name,
        time(c.created_at_ms)
    );
    if c.vehicles.is_empty() {
        text.push_str("no vehicles\n");
    } else {
        let mut vehicles = Table::new(&["VIN", "ROLE", "LINKED"]);
        for v in &c.vehicles {
            let role = match fleet::VehicleRole::try_from(v.role) {
                Ok(fleet::VehicleRole::Owner) => "owner".to_owned(),
                Ok(fleet::VehicleRole::Driver) => "driver".to_owned(),
                _ => format!("role {}", v.role),
            };
            vehicles.row([v.vin.clone(), role, time(v.linked_at_ms)]);
        }
        text.push_str(&vehicles.render());
    }
    if c.social_identities.is_empty() {
        text.push_str("no social identities\n");
    } else {
        let mut social = Table::new(&["PROVIDER", "SUBJECT", "LINKED"]);
        for s in &c.social_identities {
            social.row([s.provider.clone(), s.subject.clone(), time(s.linked_at_ms)]);
        }
        text.push_str(&social.render());
    }
    text
}

/// What a timeline entry was, and its particulars.
fn describe_entry(what: Option<&What>) -> (&'static str, String) {
    match what {
        Some(What::Request(r)) => {
            let mut detail = format!("{}/{} {} {}", r.service, r.method, r.code_name, micros(r.latency_us));
            if let Some(a) = &r.amount {
                let _ = write!(detail, " {}", amount(a));
            }
            if !r.request_id.is_empty() {
                let _ = write!(detail, " id={}", r.request_id);
            }
            ("request", detail)
        }
        Some(What::Event(e)) => ("event", format!("{} {} #{}", e.service, e.kind, e.sequence)),
        Some(What::Session(s)) => {
            use fleet::session_record::Change;
            let change = match Change::try_from(s.change) {
                Ok(Change::Connected) => "connected",
                Ok(Change::Disconnected) => "disconnected",
                Ok(Change::Kicked) => "kicked",
                Ok(Change::Revoked) => "revoked",
                _ => "changed",
            };
            let detail = match s.detail.as_str() {
                "" => change.to_owned(),
                d => format!("{change}: {d}"),
            };
            ("session", detail)
        }
        None => ("?", String::new()),
    }
}

/// An amount in its currency's major unit, assuming two decimals (CNY, EUR, USD, ...).
fn amount(a: &fleet::Amount) -> String {
    let sign = if a.minor_units < 0 { "-" } else { "" };
    let abs = a.minor_units.unsigned_abs();
    format!("{sign}{}.{:02} {}", abs / 100, abs % 100, a.currency)
}

fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn seconds(s: f64) -> String {
    micros((s * 1e6).round().max(0.0) as u64)
}

/// Unix ms as local RFC 3339 to the second; `-` for 0 (not set).
fn time(ms: i64) -> String {
    format_ms(ms, SecondsFormat::Secs)
}

/// Unix ms as local RFC 3339 to the millisecond, for timelines, where order within a second
/// matters.
fn time_ms(ms: i64) -> String {
    format_ms(ms, SecondsFormat::Millis)
}

fn format_ms(ms: i64, precision: SecondsFormat) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        _ if ms == 0 => "-".to_owned(),
        Some(t) => t.with_timezone(&Local).to_rfc3339_opts(precision, false),
        None => format!("{ms} ms"),
    }
}

/// `message` as the proto3 JSON mapping, on one line.
fn json_line(method: &str, message: &impl Message) -> Result<String, Failure> {
    let path = MethodPath::parse(&format!("/fleet.v1.FleetOps/{method}"))
        .map_err(|e| Failure::Other(format!("method path: {e}")))?;
    let pretty = Contracts::compiled()
        .response_to_json(&path, &message.encode_to_vec())
        .map_err(|e| Failure::Other(e.to_string()))?;
    // Contracts pretty-prints; scripts read one object per line.
    let value: serde_json::Value = serde_json::from_str(&pretty).map_err(|e| Failure::Other(e.to_string()))?;
    Ok(value.to_string())
}

/// Columns aligned on the widest cell, two spaces apart; the last column is not padded.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.rows.push(cells.into_iter().map(|c| printable_whole(&c)).collect());
    }

    /// The table, each line ending in a newline.
    fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_its_columns() {
        let mut t = Table::new(&["VIN", "REASON"]);
        t.row(["LSVAU2180N2183294".to_owned(), "stolen".to_owned()]);
        t.row(["X".to_owned(), "bell\u{7}".to_owned()]);
        assert_eq!(
            t.render(),
            "VIN                REASON\nLSVAU2180N2183294  stolen\nX                  bell\\u{7}\n"
        );
    }

    #[test]
    fn json_is_the_proto3_mapping_on_one_line() {
        let r = fleet::RevokeVehicleResponse {
            revoked_at_ms: 1_748_736_000_000,
            was_connected: true,
        };
        assert_eq!(
            json_line("RevokeVehicle", &r).unwrap(),
            r#"{"revokedAtMs":"1748736000000","wasConnected":true}"#
        );
    }

    #[test]
    fn amounts_and_latencies_read_as_people_write_them() {
        let a = fleet::Amount {
            minor_units: 1250,
            currency: "CNY".into(),
        };
        assert_eq!(amount(&a), "12.50 CNY");
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(12_345), "12.3 ms");
        assert_eq!(seconds(2.5), "2.50 s");
        assert_eq!(time(0), "-");
    }
}
