//! The MQTT topic scheme. Every topic of a car lives under `/tenants/{VIN}/`, the namespace the
//! gateway confines the car to, by the identity in its certificate.

use crate::Vin;

/// Filter for the requests of every car, for a stand-in gateway built on a plain MQTT broker
/// (the agent's tests use one); the gateway itself takes each car's requests point to point.
pub const ALL_REQUESTS: &str = "/tenants/+/v1/req";

/// Filter for the event acknowledgements of every car, for such a stand-in gateway.
pub const ALL_EVENT_ACKS: &str = "/tenants/+/v1/events/ack";

/// The namespace a car may publish and subscribe in: every topic of it begins with this.
pub fn namespace(vin: &Vin) -> String {
    format!("/tenants/{vin}/")
}

/// Where a car publishes its requests.
pub fn requests(vin: &Vin) -> String {
    format!("/tenants/{vin}/v1/req")
}

/// Where the gateway publishes responses for a car.
pub fn responses(vin: &Vin) -> String {
    format!("/tenants/{vin}/v1/resp")
}

/// Where the gateway publishes partner events for a car.
pub fn events(vin: &Vin) -> String {
    format!("/tenants/{vin}/v1/events")
}

/// Where a car acknowledges events.
pub fn event_acks(vin: &Vin) -> String {
    format!("/tenants/{vin}/v1/events/ack")
}

/// The VIN of an event-acknowledgement topic, or `None` if `topic` is not one.
pub fn vin_of_event_ack_topic(topic: &str) -> Option<Vin> {
    let vin = topic.strip_prefix("/tenants/")?.strip_suffix("/v1/events/ack")?;
    Vin::parse(vin).ok()
}

/// The VIN of a request topic, or `None` if `topic` is not one.
pub fn vin_of_request_topic(topic: &str) -> Option<Vin> {
    let vin = topic.strip_prefix("/tenants/")?.strip_suffix("/v1/req")?;
    Vin::parse(vin).ok()
}

/// Whether `topic` (or a filter) lies inside `vin`'s namespace and names no other tenant.
pub fn is_within_tenant(vin: &Vin, topic: &str) -> bool {
    topic
        .strip_prefix("/tenants/")
        .and_then(|rest| rest.strip_prefix(vin.as_str()))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether a car may publish on `topic`: inside its namespace, but not on the topics the
/// gateway owns (responses and events), so a car cannot forge gateway messages even to itself.
pub fn may_publish(vin: &Vin, topic: &str) -> bool {
    is_within_tenant(vin, topic) && !topic.contains(['+', '#']) && topic != responses(vin) && topic != events(vin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topic_round_trips() {
        assert_eq!(vin_of_request_topic(&requests(&Vin::example())), Some(Vin::example()));
        assert_eq!(vin_of_request_topic("/tenants/WBA3B5C50DF123456/v1/resp"), None);
        assert_eq!(vin_of_request_topic("/tenants/+/v1/req"), None);
        assert_eq!(
            vin_of_event_ack_topic(&event_acks(&Vin::example())),
            Some(Vin::example())
        );
        assert!(may_publish(&Vin::example(), &event_acks(&Vin::example())));
    }

    #[test]
    fn cars_publish_requests_but_not_gateway_topics() {
        assert!(may_publish(&Vin::example(), &requests(&Vin::example())));
        assert!(!may_publish(&Vin::example(), &responses(&Vin::example())));
        assert!(!may_publish(&Vin::example(), &events(&Vin::example())));
        assert!(!may_publish(&Vin::example(), "/tenants/WBA3B5C50DF123456/v1/+"));
    }

    #[test]
    fn tenant_namespace_is_exact() {
        assert!(is_within_tenant(&Vin::example(), "/tenants/WBA3B5C50DF123456/v1/resp"));
        assert!(is_within_tenant(&Vin::example(), "/tenants/WBA3B5C50DF123456/#"));
        assert!(!is_within_tenant(&Vin::example(), "/tenants/WBA3B5C50DF123456"));
        assert!(!is_within_tenant(&Vin::example(), "/tenants/WBA3B5C50DF1234567/x"));
        assert!(!is_within_tenant(&Vin::example(), "/tenants/+/v1/resp"));
        assert!(!is_within_tenant(&Vin::example(), "#"));
        assert!(!is_within_tenant(
            &Vin::example(),
            "$share/g/tenants/WBA3B5C50DF123456/x"
        ));
    }
}
