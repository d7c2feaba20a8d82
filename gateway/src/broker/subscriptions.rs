//! One car's subscriptions: which filters it holds, at what QoS, and whether they cover the
//! gateway's events topic. Bounded: at most the configured number of filters per car.

use proto::{Vin, topics};
use rumqttc::mqttbytes::{QoS, matches, valid_filter};

/// Highest QoS the gateway grants: QoS 2's exactly-once holds only within one session, and the
/// platform gets exactly-once end to end from idempotency keys instead.
const MAX_GRANTED_QOS: QoS = QoS::AtLeastOnce;

/// What subscribing to one filter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The QoS granted to the car.
    pub qos: QoS,
    /// The filter covers the car's events topic.
    pub events: bool,
}

/// The car holds its maximum of filters already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyFilters;

/// A car's filters with their granted QoS.
pub type FilterList = Vec<(String, QoS)>;

/// Whether a car may subscribe to `filter`: a valid MQTT filter of at most `max_topic_bytes`,
/// without NUL, inside `vin`'s namespace. The namespace is checked first: a filter that names
/// `/tenants/{vin}/` literally can never match another car's topic.
pub fn acceptable_filter(vin: &Vin, filter: &str, max_topic_bytes: usize) -> bool {
    topics::is_within_tenant(vin, filter)
        && valid_filter(filter)
        && !filter.contains('\0')
        && filter.len() <= max_topic_bytes
}

/// A car's current subscriptions.
#[derive(Debug, Default, Clone)]
pub struct Subscriptions {
    filters: FilterList,
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

    /// Adds (or replaces) `filter`, which must lie in `vin`'s namespace and be valid; a new
    /// filter beyond `max_filters` is refused.
    pub fn add(&mut self, vin: &Vin, filter: &str, asked: QoS, max_filters: usize) -> Result<Granted, TooManyFilters> {
        let qos = if asked > MAX_GRANTED_QOS {
            MAX_GRANTED_QOS
        } else {
            asked
        };
        let held = self.filters.len();
        match self.filters.iter_mut().find(|(f, _)| f == filter) {
            Some(existing) => existing.1 = qos,
            None if held >= max_filters => return Err(TooManyFilters),
            None => self.filters.push((filter.to_owned(), qos)),
        }
        Ok(Granted {
            qos,
            events: matches(&topics::events(vin), filter),
        })
    }

    /// Removes `filter`.
    pub fn remove(&mut self, filter: &str) {
        self.filters.retain(|(f, _)| f != filter);
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
            .filter(|(f, _)| matches(topic, f))
            .map(|(_, q)| *q)
            .reduce(|a, b| if b > a { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_filters_deliver_at_their_highest_qos() {
        let mut subs = Subscriptions::default();
        let resp = subs
            .add(
                &Vin::example(),
                &topics::responses(&Vin::example()),
                QoS::ExactlyOnce,
                8,
            )
            .unwrap();
        assert_eq!(
            resp,
            Granted {
                qos: QoS::AtLeastOnce,
                events: false
            }
        );
        let all = subs
            .add(&Vin::example(), "/tenants/WBA3B5C50DF123456/#", QoS::AtMostOnce, 8)
            .unwrap();
        assert!(all.events);
        assert_eq!(
            subs.qos_for_topic(&topics::responses(&Vin::example())),
            Some(QoS::AtLeastOnce)
        );
        assert_eq!(
            subs.qos_for_topic(&topics::events(&Vin::example())),
            Some(QoS::AtMostOnce)
        );
        subs.remove("/tenants/WBA3B5C50DF123456/#");
        assert!(!subs.covers_events(&Vin::example()));
        subs.remove(&topics::responses(&Vin::example()));
        assert_eq!(subs.qos_for_topic(&topics::responses(&Vin::example())), None);
    }

    #[test]
    fn a_car_holds_at_most_its_maximum_of_filters_but_may_change_one_it_has() {
        let mut subs = Subscriptions::default();
        for level in ["a", "b"] {
            subs.add(
                &Vin::example(),
                &format!("/tenants/WBA3B5C50DF123456/{level}"),
                QoS::AtMostOnce,
                2,
            )
            .unwrap();
        }
        assert_eq!(
            subs.add(&Vin::example(), "/tenants/WBA3B5C50DF123456/c", QoS::AtMostOnce, 2),
            Err(TooManyFilters)
        );
        let again = subs.add(&Vin::example(), "/tenants/WBA3B5C50DF123456/a", QoS::AtLeastOnce, 2);
        assert_eq!(again.map(|g| g.qos), Ok(QoS::AtLeastOnce));
        assert_eq!(subs.filters().len(), 2);
    }
}
