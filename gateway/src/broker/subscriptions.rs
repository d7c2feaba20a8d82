//! One car's subscriptions: which of the gateway's own topics they cover, at what QoS, and
//! which filters must also go to the pub/sub router for the car's other topics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use proto::{Vin, topics};
use rumqttc::mqttbytes::QoS;

/// Highest QoS the gateway grants: QoS 2's exactly-once holds only within one session, and the
/// platform gets exactly-once end to end from idempotency keys instead.
const MAX_GRANTED_QOS: QoS = QoS::AtLeastOnce;

/// Whether `filter` is a well-formed MQTT topic filter (`#` only as the whole last level, `+`
/// only as a whole level).
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => !other.contains(['#', '+']),
    })
}

/// Whether subscription `filter` receives messages published on `topic`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What subscribing to one filter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The QoS granted to the car.
    pub qos: QoS,
    /// The filter may match topics outside the gateway's own: the router must know it.
    pub pubsub: bool,
    /// The filter covers the car's events topic.
    pub events: bool,
}

/// A car's current subscriptions.
#[derive(Debug, Default, Clone)]
pub struct Subscriptions {
    filters: Vec<(String, QoS)>,
}

impl Subscriptions {
    /// Subscriptions restored from a saved session.
    pub fn restore(filters: FilterList) -> Subscriptions {
        Subscriptions { filters }
    }

    /// Every filter, with its granted QoS.
    pub fn filters(&self) -> &[(String, QoS)] {
        &self.filters
    }

    /// Adds (or replaces) `filter`, which must lie in `vin`'s namespace and be valid.
    pub fn add(&mut self, vin: &Vin, filter: &str, asked: QoS) -> Granted {
        let qos = if asked > MAX_GRANTED_QOS {
            MAX_GRANTED_QOS
        } else {
            asked
        };
        match self.filters.iter_mut().find(|(f, _)| f == filter) {
            Some(existing) => existing.1 = qos,
            None => self.filters.push((filter.to_owned(), qos)),
        }
        Granted {
            qos,
            pubsub: reaches_pubsub(vin, filter),
            events: matches(filter, &topics::events(vin)),
        }
    }

    /// Removes `filter`; says whether the router had it.
    pub fn remove(&mut self, vin: &Vin, filter: &str) -> bool {
        let before = self.filters.len();
        self.filters.retain(|(f, _)| f != filter);
        before != self.filters.len() && reaches_pubsub(vin, filter)
    }

    /// The filters the router must have.
    pub fn pubsub_filters(&self, vin: &Vin) -> Vec<String> {
        self.filters
            .iter()
            .filter(|(f, _)| reaches_pubsub(vin, f))
            .map(|(f, _)| f.clone())
            .collect()
    }

    /// Whether any subscription covers the car's events topic.
    pub fn covers_events(&self, vin: &Vin) -> bool {
        self.qos_for_topic(&topics::events(vin)).is_some()
    }

    /// The QoS at which a message on `topic` goes out (the highest of the matching
    /// subscriptions, as MQTT requires for overlapping ones), or `None`.
    pub fn qos_for_topic(&self, topic: &str) -> Option<QoS> {
        self.filters
            .iter()
            .filter(|(f, _)| matches(f, topic))
            .map(|(_, q)| *q)
            .reduce(|a, b| if b > a { b } else { a })
    }
}

/// Whether `filter` can match anything the router carries: every topic but the gateway's four
/// (a filter naming exactly one of those is served by the gateway alone).
fn reaches_pubsub(vin: &Vin, filter: &str) -> bool {
    ![
        topics::requests(vin),
        topics::responses(vin),
        topics::events(vin),
        topics::event_acks(vin),
    ]
    .iter()
    .any(|own| own == filter)
}

/// A car's filters with their granted QoS.
pub type FilterList = Vec<(String, QoS)>;

/// Subscriptions of cars that connected with `clean_session = false`, kept in memory (like
/// rumqttd's own) from one connection to the next; messages are not queued while they are away.
#[derive(Debug, Clone, Default)]
pub struct SavedSessions {
    saved: Arc<Mutex<HashMap<Vin, FilterList>>>,
}

impl SavedSessions {
    /// What a connecting car resumes: its saved subscriptions for a persistent session (`None`
    /// if it had none, then the CONNACK says no session was present); a clean session forgets them.
    pub fn resume(&self, vin: &Vin, clean_session: bool) -> Option<FilterList> {
        let mut saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        if clean_session {
            saved.remove(vin);
            None
        } else {
            saved.get(vin).cloned()
        }
    }

    /// Records a persistent session's subscriptions (after each change).
    pub fn save(&self, vin: &Vin, subscriptions: &Subscriptions) {
        self.saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(vin.clone(), subscriptions.filters().to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vin() -> Vin {
        Vin::parse("WBA3B5C50DF123456").unwrap()
    }

    #[test]
    fn filters_are_checked_for_form() {
        for ok in ["a", "/tenants/X/#", "/tenants/+/v1/resp", "+", "#", "a//b"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a", "a\0b"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn wildcards_match_like_mqtt() {
        assert!(matches("/tenants/+/v1/resp", "/tenants/WBA3B5C50DF123456/v1/resp"));
        assert!(matches(
            "/tenants/WBA3B5C50DF123456/#",
            "/tenants/WBA3B5C50DF123456/v1/events"
        ));
        assert!(!matches(
            "/tenants/WBA3B5C50DF123456/v1/+",
            "/tenants/WBA3B5C50DF123456/v1/events/ack"
        ));
        assert!(!matches(
            "/tenants/WBA3B5C50DF123456/v1/resp",
            "/tenants/WBA3B5C50DF123456/v1/events"
        ));
    }

    #[test]
    fn the_gateways_topics_stay_out_of_the_router_unless_a_wildcard_needs_it() {
        let mut subs = Subscriptions::default();
        let resp = subs.add(&vin(), &topics::responses(&vin()), QoS::ExactlyOnce);
        assert_eq!(
            resp,
            Granted {
                qos: QoS::AtLeastOnce,
                pubsub: false,
                events: false
            }
        );
        let all = subs.add(&vin(), "/tenants/WBA3B5C50DF123456/#", QoS::AtMostOnce);
        assert!(all.pubsub && all.events);
        assert_eq!(subs.qos_for_topic(&topics::responses(&vin())), Some(QoS::AtLeastOnce));
        assert_eq!(subs.qos_for_topic(&topics::events(&vin())), Some(QoS::AtMostOnce));
        assert_eq!(
            subs.pubsub_filters(&vin()),
            vec!["/tenants/WBA3B5C50DF123456/#".to_owned()]
        );
        assert!(subs.remove(&vin(), "/tenants/WBA3B5C50DF123456/#"));
        assert!(!subs.covers_events(&vin()));
        assert!(!subs.remove(&vin(), &topics::responses(&vin())));
        assert_eq!(subs.qos_for_topic(&topics::responses(&vin())), None);
    }

    #[test]
    fn a_persistent_session_keeps_its_subscriptions_and_a_clean_one_forgets_them() {
        let saved = SavedSessions::default();
        assert_eq!(saved.resume(&vin(), false), None);
        let mut subs = Subscriptions::default();
        subs.add(&vin(), &topics::responses(&vin()), QoS::AtLeastOnce);
        saved.save(&vin(), &subs);
        assert_eq!(saved.resume(&vin(), false).map(|f| f.len()), Some(1));
        assert_eq!(saved.resume(&vin(), true), None);
        assert_eq!(saved.resume(&vin(), false), None);
    }
}
