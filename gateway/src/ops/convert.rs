//! Domain types to `fleet.v1` messages: the one place the ops API's protobuf is built.

use proto::fleet::v1 as fleet;

use crate::broker::ConnectionEvent;
use crate::routing::PartnerStatus;
use crate::store::{
    ConnectionRecord, Customer, Interaction, JournalEntry, RevocationRecord, SessionChange, VehicleRole,
};

/// A recorded connection as a `Session`.
pub fn session(record: ConnectionRecord) -> fleet::Session {
    let c = record.connection;
    fleet::Session {
        vin: c.vin.as_str().to_owned(),
        node: c.node,
        remote_addr: c.remote_addr,
        agent_version: c.agent_version.unwrap_or_default(),
        cert_fingerprint: c.cert_fingerprint,
        connected_at_ms: c.connected_at_ms,
        disconnected_at_ms: record.disconnected_at_ms.unwrap_or(0),
        disconnect_reason: record.disconnect_reason.unwrap_or_default(),
    }
}

/// A connection event of `node` as a `SessionChange` (`None` for what operators do not see).
pub fn session_change(node: &str, event: &ConnectionEvent) -> Option<fleet::SessionChange> {
    use fleet::session_change::Kind;
    let (kind, session) = match event {
        ConnectionEvent::Connected(info) => (
            Kind::Connected,
            fleet::Session {
                vin: info.vin.as_str().to_owned(),
                node: node.to_owned(),
                remote_addr: info.remote.to_string(),
                agent_version: info.agent_version.clone().unwrap_or_default(),
                cert_fingerprint: info.fingerprint.clone(),
                connected_at_ms: info.at_ms,
                ..Default::default()
            },
        ),
        ConnectionEvent::Disconnected { vin, reason, at_ms, .. } => (
            Kind::Disconnected,
            fleet::Session {
                vin: vin.as_str().to_owned(),
                node: node.to_owned(),
                disconnected_at_ms: *at_ms,
                disconnect_reason: reason.to_string(),
                ..Default::default()
            },
        ),
        ConnectionEvent::EventsSubscribed { .. } => return None,
    };
    Some(fleet::SessionChange {
        kind: kind.into(),
        session: Some(session),
    })
}

/// The VIN a connection event is about.
pub fn event_vin(event: &ConnectionEvent) -> &str {
    match event {
        ConnectionEvent::Connected(info) => info.vin.as_str(),
        ConnectionEvent::Disconnected { vin, .. } | ConnectionEvent::EventsSubscribed { vin, .. } => vin.as_str(),
    }
}

/// A partner's last minute and its breaker as a `PartnerStatus`.
pub fn partner_status(status: PartnerStatus) -> fleet::PartnerStatus {
    fleet::PartnerStatus {
        service: status.service,
        requests_per_second: status.requests_per_second,
        p50_latency_seconds: status.p50_latency.as_secs_f64(),
        p99_latency_seconds: status.p99_latency.as_secs_f64(),
        error_rate: status.error_rate,
        breaker: status.breaker.name().to_owned(),
        calls_in_flight: u32::try_from(status.calls_in_flight).unwrap_or(u32::MAX),
        shed_total: status.shed_total,
        refused_total: status.refused_total,
    }
}

/// A stored revocation as a `Revocation`.
pub fn revocation(record: RevocationRecord) -> fleet::Revocation {
    fleet::Revocation {
        vin: record.vin.as_str().to_owned(),
        revoked_at_ms: record.revoked_at_ms,
        reason: record.reason,
        revoked_by: record.revoked_by,
    }
}

/// A customer as a `Customer`.
pub fn customer(c: Customer) -> fleet::Customer {
    fleet::Customer {
        id: c.id.as_str().to_owned(),
        display_name: c.display_name,
        created_at_ms: c.created_at_ms,
        vehicles: c
            .vehicles
            .into_iter()
            .map(|v| fleet::VehicleLink {
                vin: v.vin.as_str().to_owned(),
                role: vehicle_role(v.role).into(),
                linked_at_ms: v.linked_at_ms,
            })
            .collect(),
        social_identities: c
            .social_identities
            .into_iter()
            .map(|s| fleet::SocialIdentity {
                provider: s.provider,
                subject: s.subject,
                linked_at_ms: s.linked_at_ms,
            })
            .collect(),
    }
}

fn vehicle_role(role: VehicleRole) -> fleet::VehicleRole {
    match role {
        VehicleRole::Owner => fleet::VehicleRole::Owner,
        VehicleRole::Driver => fleet::VehicleRole::Driver,
    }
}

/// A `VehicleRole` as the store's, `None` when unspecified.
pub fn role_of(role: fleet::VehicleRole) -> Option<VehicleRole> {
    match role {
        fleet::VehicleRole::Owner => Some(VehicleRole::Owner),
        fleet::VehicleRole::Driver => Some(VehicleRole::Driver),
        fleet::VehicleRole::Unspecified => None,
    }
}

/// A journal row as a `TimelineEntry`.
pub fn timeline_entry(entry: JournalEntry) -> fleet::TimelineEntry {
    use fleet::timeline_entry::What;
    let what = match entry.what {
        Interaction::Request(r) => What::Request(fleet::RequestRecord {
            service: r.service,
            method: r.method,
            code: r.code,
            code_name: proto::status::code_name(r.code).to_owned(),
            latency_us: r.latency_us,
            amount: r.amount.map(|a| fleet::Amount {
                minor_units: a.minor_units,
                currency: a.currency,
            }),
            request_id: r.request_id,
            request_payload: r.request_payload.unwrap_or_default(),
            response_payload: r.response_payload.unwrap_or_default(),
        }),
        Interaction::Event(e) => What::Event(fleet::EventRecord {
            service: e.service,
            kind: e.kind,
            sequence: e.sequence,
        }),
        Interaction::Session(s) => What::Session(fleet::SessionRecord {
            change: match s.change {
                SessionChange::Connected => fleet::session_record::Change::Connected,
                SessionChange::Disconnected => fleet::session_record::Change::Disconnected,
                SessionChange::Kicked => fleet::session_record::Change::Kicked,
                SessionChange::Revoked => fleet::session_record::Change::Revoked,
            }
            .into(),
            detail: s.detail,
        }),
    };
    fleet::TimelineEntry {
        at_ms: entry.at_ms,
        vin: entry.vin.as_str().to_owned(),
        what: Some(what),
    }
}
