//! What the gateway keeps of a car between its MQTT sessions: the subscriptions of a
//! persistent session (`clean_session = false`) and the car's retained messages.
//!
//! Both are bounded per car (the subscription cap, [`RetainedLimits`]) and both go when the
//! car has been away for the session expiry interval ([`SavedSessions::expire`]), the way
//! MQTT 5's Session Expiry Interval and EMQX's `session_expiry_interval` let stored sessions
//! go: a car that never comes back costs nothing after that. While a session of the VIN is
//! live, its entry never expires.
//!
//! Every change names the connection making it, so a session that was taken over (its
//! successor is already live) cannot overwrite or release what its successor now owns.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use proto::Vin;
use rumqttc::mqttbytes::matches;
use tokio::time::Instant;

use super::subscriptions::{FilterList, Subscriptions};

/// How many retained messages, and how many bytes of them, one car may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedLimits {
    /// Distinct topics with a retained message.
    pub max_messages: usize,
    /// Bytes of topics and payloads together.
    pub max_bytes: usize,
}

/// A retained message the car may no longer add.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetainError {
    /// The car keeps its maximum of retained topics already.
    #[error("retained messages: at most {0} topics per car")]
    TooMany(usize),
    /// The message would take the car over its retained bytes.
    #[error("retained messages: at most {0} bytes per car")]
    TooLarge(usize),
}

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// The QoS it was published with (0 or 1).
    pub qos: u8,
}

/// What is kept for one VIN.
#[derive(Debug, Default)]
struct Saved {
    /// The live session's connection, if one is live.
    owner: Option<u64>,
    /// When the last session ended; `None` while one is live.
    away_since: Option<Instant>,
    /// Subscriptions of a persistent session.
    filters: Option<FilterList>,
    /// Retained messages by topic, with their QoS.
    retained: BTreeMap<String, (Bytes, u8)>,
    /// Bytes of `retained`'s topics and payloads.
    retained_bytes: usize,
}

impl Saved {
    fn is_empty(&self) -> bool {
        self.owner.is_none() && self.filters.is_none() && self.retained.is_empty()
    }
}

/// Saved state of every car, by VIN. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SavedSessions {
    by_vin: Arc<Mutex<HashMap<Vin, Saved>>>,
}

/// What is saved, for operators and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SavedStats {
    /// VINs with something kept.
    pub vehicles: usize,
    /// Persistent sessions whose car is away.
    pub away: usize,
    /// Retained messages.
    pub retained: usize,
    /// Bytes of retained messages.
    pub retained_bytes: usize,
}

impl SavedSessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Vin, Saved>> {
        self.by_vin.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connection `conn` of `vin` begins its session. Returns the saved subscriptions it
    /// resumes (`None`: no session was present, as the CONNACK says); a clean session forgets
    /// them.
    pub fn attach(&self, vin: &Vin, conn: u64, clean_session: bool) -> Option<FilterList> {
        let mut all = self.lock();
        let saved = all.entry(vin.clone()).or_default();
        saved.owner = Some(conn);
        saved.away_since = None;
        if clean_session {
            saved.filters = None;
            None
        } else {
            saved.filters.clone()
        }
    }

    /// Records the subscriptions of `conn`'s persistent session, after each change.
    pub fn save_filters(&self, vin: &Vin, conn: u64, subscriptions: &Subscriptions) {
        if let Some(saved) = self.lock().get_mut(vin).filter(|s| s.owner == Some(conn)) {
            saved.filters = Some(subscriptions.filters().to_vec());
        }
    }

    /// Connection `conn`'s session ended. A persistent session's subscriptions are kept (and
    /// start expiring); a clean session's are not.
    pub fn detach(&self, vin: &Vin, conn: u64, persistent: bool) {
        let mut all = self.lock();
        let Some(saved) = all.get_mut(vin).filter(|s| s.owner == Some(conn)) else {
            return;
        };
        saved.owner = None;
        saved.away_since = Some(Instant::now());
        if !persistent {
            saved.filters = None;
        }
        if saved.is_empty() {
            all.remove(vin);
        }
    }

    /// Keeps `payload` as `topic`'s retained message (an empty payload removes it, as MQTT
    /// says), within `limits`.
    pub fn retain(
        &self,
        vin: &Vin,
        topic: &str,
        payload: Bytes,
        qos: u8,
        limits: RetainedLimits,
    ) -> Result<(), RetainError> {
        let mut all = self.lock();
        let saved = all.entry(vin.clone()).or_default();
        let old = saved.retained.remove(topic);
        let freed = old.as_ref().map_or(0, |(p, _)| topic.len() + p.len());
        saved.retained_bytes -= freed;
        if payload.is_empty() {
            if saved.is_empty() {
                all.remove(vin);
            }
            return Ok(());
        }
        let cost = topic.len() + payload.len();
        let refusal = if saved.retained.len() >= limits.max_messages {
            Some(RetainError::TooMany(limits.max_messages))
        } else if saved.retained_bytes + cost > limits.max_bytes {
            Some(RetainError::TooLarge(limits.max_bytes))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            // The previous message stays, as if this publish had not happened.
            if let Some(old) = old {
                saved.retained_bytes += freed;
                saved.retained.insert(topic.to_owned(), old);
            }
            return Err(refusal);
        }
        saved.retained_bytes += cost;
        saved.retained.insert(topic.to_owned(), (payload, qos));
        Ok(())
    }

    /// The car's retained messages on topics `filter` matches.
    pub fn retained_matching(&self, vin: &Vin, filter: &str) -> Vec<Retained> {
        self.lock().get(vin).map_or_else(Vec::new, |saved| {
            saved
                .retained
                .iter()
                .filter(|(topic, _)| matches(topic, filter))
                .map(|(topic, (payload, qos))| Retained {
                    topic: topic.clone(),
                    payload: payload.clone(),
                    qos: *qos,
                })
                .collect()
        })
    }

    /// Forgets what cars away for at least `expiry` kept; returns their VINs.
    pub fn expire(&self, expiry: Duration) -> Vec<Vin> {
        let now = Instant::now();
        let mut expired = Vec::new();
        self.lock().retain(|vin, saved| {
            let keep = saved.away_since.is_none_or(|since| now.duration_since(since) < expiry);
            if !keep {
                expired.push(vin.clone());
            }
            keep
        });
        expired
    }

    /// What is saved right now.
    pub fn stats(&self) -> SavedStats {
        let all = self.lock();
        all.values().fold(
            SavedStats {
                vehicles: all.len(),
                ..SavedStats::default()
            },
            |mut stats, saved| {
                stats.away += usize::from(saved.owner.is_none() && saved.filters.is_some());
                stats.retained += saved.retained.len();
                stats.retained_bytes += saved.retained_bytes;
                stats
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::mqttbytes::QoS;

    use super::*;

    const LIMITS: RetainedLimits = RetainedLimits {
        max_messages: 2,
        max_bytes: 100,
    };

    fn topic(level: &str) -> String {
        format!("/tenants/WBA3B5C50DF123456/{level}")
    }

    #[test]
    fn a_persistent_session_keeps_its_subscriptions_and_a_clean_one_forgets_them() {
        let saved = SavedSessions::default();
        assert_eq!(saved.attach(&Vin::example(), 1, false), None);
        let mut subs = Subscriptions::default();
        subs.add(
            &Vin::example(),
            &proto::topics::responses(&Vin::example()),
            QoS::AtLeastOnce,
            8,
        )
        .unwrap();
        saved.save_filters(&Vin::example(), 1, &subs);
        saved.detach(&Vin::example(), 1, true);
        assert_eq!(saved.attach(&Vin::example(), 2, false).map(|f| f.len()), Some(1));
        saved.detach(&Vin::example(), 2, true);
        assert_eq!(saved.attach(&Vin::example(), 3, true), None);
        saved.detach(&Vin::example(), 3, false);
        assert_eq!(saved.attach(&Vin::example(), 4, false), None);
    }

    #[test]
    fn a_session_taken_over_cannot_change_what_its_successor_owns() {
        let saved = SavedSessions::default();
        saved.attach(&Vin::example(), 1, false);
        saved.attach(&Vin::example(), 2, false);
        let mut subs = Subscriptions::default();
        subs.add(&Vin::example(), &topic("a"), QoS::AtMostOnce, 8).unwrap();
        saved.save_filters(&Vin::example(), 1, &subs);
        saved.detach(&Vin::example(), 1, false);
        assert_eq!(saved.stats().vehicles, 1, "the live session's entry stays");
        assert!(saved.expire(Duration::ZERO).is_empty(), "a live session never expires");
        saved.detach(&Vin::example(), 2, true);
        assert_eq!(
            saved.attach(&Vin::example(), 3, false),
            None,
            "the old session saved nothing"
        );
    }

    #[test]
    fn retained_messages_are_capped_in_count_and_bytes_and_replacing_one_is_free() {
        let saved = SavedSessions::default();
        let car = Vin::example();
        let payload = |n: usize| Bytes::from(vec![b'x'; n]);
        saved.retain(&car, &topic("a"), payload(10), 1, LIMITS).unwrap();
        saved.retain(&car, &topic("a"), payload(20), 1, LIMITS).unwrap();
        saved.retain(&car, &topic("b"), payload(10), 0, LIMITS).unwrap();
        assert_eq!(
            saved.retain(&car, &topic("c"), payload(1), 0, LIMITS),
            Err(RetainError::TooMany(2))
        );
        assert_eq!(
            saved.retain(&car, &topic("b"), payload(90), 0, LIMITS),
            Err(RetainError::TooLarge(100))
        );
        let kept = saved.retained_matching(&car, &topic("#"));
        assert_eq!(
            kept.iter()
                .map(|r| (r.topic.as_str(), r.payload.len()))
                .collect::<Vec<_>>(),
            vec![(topic("a").as_str(), 20), (topic("b").as_str(), 10)],
            "a refused replacement keeps the previous message"
        );
        saved.retain(&car, &topic("a"), Bytes::new(), 0, LIMITS).unwrap();
        assert_eq!(saved.retained_matching(&car, &topic("a")), vec![]);
        assert_eq!(saved.stats().retained_bytes, topic("b").len() + 10);
    }

    #[test]
    fn what_an_absent_car_kept_expires() {
        let saved = SavedSessions::default();
        saved.attach(&Vin::example(), 1, false);
        saved
            .retain(
                &Vin::example(),
                &topic("status"),
                Bytes::from_static(b"parked"),
                1,
                LIMITS,
            )
            .unwrap();
        saved.detach(&Vin::example(), 1, true);
        assert_eq!(saved.expire(Duration::from_secs(3600)), Vec::<Vin>::new());
        assert_eq!(saved.expire(Duration::ZERO), vec![Vin::example()]);
        assert_eq!(saved.stats(), SavedStats::default());
    }
}
