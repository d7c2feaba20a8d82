//! Validation of a parsed configuration: every range, file and partner entry checked once,
//! with a message naming the setting at fault.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::{ConfigError, GatewayConfig, invalid};

/// Upper bound of the durations added to clocks: a century, far from where they overflow.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl GatewayConfig {
    /// Checks ranges, files and partner entries.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        if m.first_flight_timeout.is_zero() || m.first_flight_timeout > Duration::from_secs(30) {
            return Err(invalid("mqtt.first_flight_timeout", "must be between 1ms and 30s"));
        }
        if m.handshake_timeout.is_zero() || m.handshake_timeout > Duration::from_secs(60) {
            return Err(invalid("mqtt.handshake_timeout", "must be between 1ms and 60s"));
        }
        if m.max_pending_per_source == 0 {
            return Err(invalid("mqtt.max_pending_per_source", "must be at least 1"));
        }
        if m.connect_timeout.is_zero() || m.connect_timeout > Duration::from_secs(60) {
            return Err(invalid("mqtt.connect_timeout", "must be between 1ms and 60s"));
        }
        if m.max_keep_alive < Duration::from_secs(5) || m.max_keep_alive > Duration::from_secs(65_535) {
            return Err(invalid("mqtt.max_keep_alive", "must be between 5s and 65535s"));
        }
        if m.write_stall_timeout.is_zero() || m.write_stall_timeout > Duration::from_secs(600) {
            return Err(invalid("mqtt.write_stall_timeout", "must be between 1ms and 10min"));
        }
        if m.max_handshakes_in_flight == 0 {
            return Err(invalid("mqtt.max_handshakes_in_flight", "must be at least 1"));
        }
        if m.max_connections == 0 {
            return Err(invalid("mqtt.max_connections", "must be at least 1"));
        }
        if m.handshake_threads > 256 {
            return Err(invalid(
                "mqtt.handshake_threads",
                "must be at most 256 (0 = half the cores)",
            ));
        }
        if m.max_requests_in_flight == 0 || m.max_requests_in_flight > 10_000 {
            return Err(invalid("mqtt.max_requests_in_flight", "must be between 1 and 10000"));
        }
        for (field, value, min, max) in [
            ("mqtt.max_subscriptions", m.max_subscriptions, 1, 10_000),
            ("mqtt.max_topic_bytes", m.max_topic_bytes, 64, 65_535),
            ("mqtt.max_qos2_awaiting_release", m.max_qos2_awaiting_release, 1, 65_535),
            ("mqtt.max_retained_messages", m.max_retained_messages, 0, 100_000),
            ("mqtt.max_retained_bytes", m.max_retained_bytes, 0, 64 << 20),
            ("mqtt.max_queued_messages", m.max_queued_messages, 1, 1_000_000),
            ("mqtt.max_queued_bytes", m.max_queued_bytes, 64 << 10, 1 << 30),
        ] {
            if !(min..=max).contains(&value) {
                return Err(invalid(field, format!("must be between {min} and {max}")));
            }
        }
        if m.session_expiry.is_zero() {
            return Err(invalid("mqtt.session_expiry", "must be positive"));
        }
        if m.packet_burst < m.max_packets_per_second {
            return Err(invalid(
                "mqtt.packet_burst",
                "must be at least mqtt.max_packets_per_second",
            ));
        }
        if m.flood_disconnect_after.is_zero() {
            return Err(invalid("mqtt.flood_disconnect_after", "must be positive"));
        }
        for (field, path) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
        ] {
            must_exist(field, path)?;
        }
        for (i, crl) in self.tls.crls.iter().enumerate() {
            must_exist(&format!("tls.crls[{i}]"), crl)?;
        }
        let r = &self.requests;
        if r.max_payload_bytes == 0 || r.max_payload_bytes > 16 * 1024 * 1024 {
            return Err(invalid("requests.max_payload_bytes", "must be between 1 and 16 MiB"));
        }
        if r.max_response_bytes == 0 || r.max_response_bytes > m.max_queued_bytes {
            return Err(invalid(
                "requests.max_response_bytes",
                "must be positive and at most mqtt.max_queued_bytes",
            ));
        }
        if r.burst_per_car < r.max_per_second_per_car {
            return Err(invalid(
                "requests.burst_per_car",
                "must be at least requests.max_per_second_per_car",
            ));
        }
        if r.default_timeout.is_zero() || r.default_timeout > r.max_timeout {
            return Err(invalid(
                "requests.default_timeout",
                "must be positive and at most requests.max_timeout",
            ));
        }
        let st = &self.storage;
        if !(st.url.starts_with("sqlite:") || st.url.starts_with("postgres://") || st.url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "storage.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if st.node.is_empty()
            || st.node.len() > 64
            || !st
                .node
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(invalid(
                "storage.node",
                "must be 1 to 64 of a-z, 0-9, - (unique per running gateway)",
            ));
        }
        if st.connection_log_retention < Duration::from_secs(3600) {
            return Err(invalid("storage.connection_log_retention", "must be at least 1 hour"));
        }
        if st.acquire_timeout.is_zero() || st.acquire_timeout > Duration::from_secs(30) {
            return Err(invalid("storage.acquire_timeout", "must be between 1ms and 30s"));
        }
        let id = &self.idempotency;
        if id.retention < Duration::from_secs(60) {
            return Err(invalid(
                "idempotency.retention",
                "must be at least 1 minute (24h recommended)",
            ));
        }
        if id.purge_interval.is_zero() {
            return Err(invalid("idempotency.purge_interval", "must be positive"));
        }
        let j = &self.journal;
        if j.retention < Duration::from_secs(3600) || j.retention > MAX_DURATION {
            return Err(invalid("journal.retention", "must be between 1 hour and 100 years"));
        }
        if !(1..=10_000_000).contains(&j.max_queued_rows) {
            return Err(invalid("journal.max_queued_rows", "must be between 1 and 10000000"));
        }
        if !(1..=10_000).contains(&j.max_batch_rows) {
            return Err(invalid("journal.max_batch_rows", "must be between 1 and 10000"));
        }
        if j.batch_delay > Duration::from_secs(1) {
            return Err(invalid("journal.batch_delay", "must be at most 1s"));
        }
        let ev = &self.events;
        if ev.default_ttl.is_zero() || ev.default_ttl > ev.max_ttl {
            return Err(invalid(
                "events.default_ttl",
                "must be positive and at most events.max_ttl",
            ));
        }
        if ev.max_payload_bytes == 0 || ev.max_payload_bytes > 1024 * 1024 {
            return Err(invalid("events.max_payload_bytes", "must be between 1 byte and 1 MiB"));
        }
        if ev.max_pending_per_vin == 0 {
            return Err(invalid("events.max_pending_per_vin", "must be at least 1"));
        }
        if ev.burst_per_partner < ev.max_per_second_per_partner {
            return Err(invalid(
                "events.burst_per_partner",
                "must be at least events.max_per_second_per_partner",
            ));
        }
        // Deadlines and expiries are added to the clock and kept in unix milliseconds, which
        // overflow for absurd values (a request's deadline would panic, the ledger's expiry wrap).
        for (field, value) in [
            ("requests.max_timeout", r.max_timeout),
            ("idempotency.retention", id.retention),
            ("events.max_ttl", ev.max_ttl),
        ] {
            if value > MAX_DURATION {
                return Err(invalid(field, "must be at most 100 years"));
            }
        }
        if let Some(ops) = &self.ops {
            ops.validate()?;
        }
        self.revocation.validate()?;
        if let Some(api) = &self.partner_api {
            must_exist("partner_api.client_ca", &api.client_ca)?;
        }
        let mut services = HashSet::new();
        for (i, p) in self.partners.iter().enumerate() {
            let field = |name: &str| format!("partners[{i}].{name}");
            if !proto::method::is_service_name(&p.service) {
                return Err(invalid(
                    field("service"),
                    format!(
                        "{:?} is not a fully qualified gRPC service such as parking.v1.ParkingPayment",
                        p.service
                    ),
                ));
            }
            if let Some(name) = &p.name
                && (name.is_empty()
                    || name.len() > 64
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            {
                return Err(invalid(
                    field("name"),
                    format!("{name:?} must be the partner certificate's CN: 1 to 64 of a-z, 0-9, -"),
                ));
            }
            if let Some(bad) = p
                .read_only_methods
                .iter()
                .find(|m| m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(invalid(
                    field("read_only_methods"),
                    format!("{bad:?} is not a method name such as ListNearbyLots"),
                ));
            }
            if !services.insert(p.service.as_str()) {
                return Err(invalid(field("service"), format!("{} is configured twice", p.service)));
            }
            let uri: http::Uri = p
                .endpoint
                .parse()
                .map_err(|e| invalid(field("endpoint"), format!("{:?}: {e}", p.endpoint)))?;
            match uri.scheme_str() {
                Some("https") => {
                    let ca = p
                        .ca_cert
                        .as_ref()
                        .ok_or_else(|| invalid(field("ca_cert"), "required for an https endpoint"))?;
                    must_exist(&field("ca_cert"), ca)?;
                    // Partners trust only the gateway's client certificate: without one the
                    // handshake fails on the first call, far from this file.
                    if p.client_cert.is_none() && p.client_key.is_none() {
                        return Err(invalid(
                            field("client_cert"),
                            "required for an https endpoint: partners accept only the gateway's client \
                             certificate (`certs init` writes it: gateway-client.pem and gateway-client.key)",
                        ));
                    }
                }
                Some("http") => {}
                _ => {
                    return Err(invalid(
                        field("endpoint"),
                        format!("{:?} must start with https:// or http://", p.endpoint),
                    ));
                }
            }
            if uri.host().is_none() || uri.port_u16().is_none() {
                return Err(invalid(
                    field("endpoint"),
                    format!("{:?} must name a host and a port", p.endpoint),
                ));
            }
            match (&p.client_cert, &p.client_key) {
                (Some(c), Some(k)) => {
                    must_exist(&field("client_cert"), c)?;
                    must_exist(&field("client_key"), k)?;
                }
                (None, None) => {}
                _ => return Err(invalid(field("client_cert"), "client_cert and client_key go together")),
            }
            if p.timeout.is_some_and(|t| t.is_zero() || t > r.max_timeout) {
                return Err(invalid(
                    field("timeout"),
                    "must be positive and at most requests.max_timeout",
                ));
            }
            if !(1..=100_000).contains(&p.max_concurrent_calls) {
                return Err(invalid(field("max_concurrent_calls"), "must be between 1 and 100000"));
            }
            if !(1..=1_000).contains(&p.breaker_failures) {
                return Err(invalid(field("breaker_failures"), "must be between 1 and 1000"));
            }
            if p.breaker_open_for < Duration::from_millis(10) || p.breaker_open_for > Duration::from_secs(3600) {
                return Err(invalid(field("breaker_open_for"), "must be between 10ms and 1h"));
            }
        }
        Ok(())
    }
}

pub(super) fn must_exist(field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(invalid(field, format!("{} is not a readable file", path.display())))
    }
}
