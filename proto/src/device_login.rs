//! The car's side of a device login (`identity.v1.SocialLogin`, RFC 8628 §3.4–3.5):
//! [`DevicePoller`] waits `interval` before each poll, adds 5 s for this and every later poll on
//! SLOW_DOWN, stops on LINKED, DENIED or EXPIRED, and gives up when `expires_in` has passed.
//! In-car apps (and the demo and tests that play one) poll with it; partners need none of it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status};

use crate::social_login::v1::poll_device_login_response::Outcome;
use crate::social_login::v1::{LinkedIdentity, PollDeviceLoginResponse, StartDeviceLoginResponse};

/// How a device login ended, as the car sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum LoginEnd {
    /// The driver approved: the linked account.
    Linked(LinkedIdentity),
    /// The driver refused.
    Denied,
    /// The partner said the codes expired.
    Expired,
    /// `expires_in` passed without an answer; the car stopped polling by itself.
    GaveUp,
}

/// Polls one device login by the rules of RFC 8628 §3.4–3.5.
#[derive(Debug, Clone)]
pub struct DevicePoller {
    interval: Duration,
    deadline: Instant,
    polls: u32,
}

impl DevicePoller {
    /// For the login `started`, from now: its interval (at least 1 s) and its expiry.
    pub fn new(started: &StartDeviceLoginResponse) -> DevicePoller {
        DevicePoller {
            interval: Duration::from_secs(u64::from(started.interval.max(1))),
            deadline: Instant::now() + Duration::from_secs(u64::from(started.expires_in)),
            polls: 0,
        }
    }

    /// The wait before the next poll.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Polls made so far.
    pub fn polls(&self) -> u32 {
        self.polls
    }

    /// Takes a SLOW_DOWN the car got outside [`DevicePoller::run`] into account: 5 s more
    /// from now on (or the partner's new interval, if longer).
    pub fn slow_down(&mut self, partner_interval_secs: u32) {
        self.interval = (self.interval + Duration::from_secs(5)).max(Duration::from_secs(partner_interval_secs.into()));
    }

    /// Polls with `poll` until the login ends: waits the interval before each poll, slows down
    /// when told to, keeps going through a link that is briefly down (UNAVAILABLE,
    /// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), returns any other error.
    pub async fn run<F, Fut>(&mut self, mut poll: F) -> Result<LoginEnd, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<PollDeviceLoginResponse, Status>>,
    {
        loop {
            if Instant::now() + self.interval > self.deadline {
                return Ok(LoginEnd::GaveUp);
            }
            tokio::time::sleep(self.interval).await;
            self.polls += 1;
            let outcome = match poll().await {
                Ok(answer) => answer.outcome,
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
                    ) =>
                {
                    continue;
                }
                Err(status) => return Err(status),
            };
            match outcome {
                Some(Outcome::Pending(_)) => {}
                Some(Outcome::SlowDown(slow)) => self.slow_down(slow.interval),
                Some(Outcome::Linked(identity)) => return Ok(LoginEnd::Linked(identity)),
                Some(Outcome::Denied(_)) => return Ok(LoginEnd::Denied),
                Some(Outcome::Expired(_)) => return Ok(LoginEnd::Expired),
                None => return Err(Status::internal("the partner answered a poll without an outcome")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use crate::social_login::v1::{LoginPending, SlowDown};

    use super::*;

    fn started(interval: u32, expires_in: u32) -> StartDeviceLoginResponse {
        StartDeviceLoginResponse {
            interval,
            expires_in,
            ..Default::default()
        }
    }

    type PollAnswer = Result<PollDeviceLoginResponse, Status>;
    /// When each poll came, in whole seconds from the start.
    type PollTimes = Arc<Mutex<Vec<u64>>>;

    /// A partner answering from `script` and noting when each poll came (in seconds from the start).
    fn scripted(script: Vec<Outcome>) -> (impl FnMut() -> std::future::Ready<PollAnswer>, PollTimes) {
        let t0 = Instant::now();
        let times = Arc::new(Mutex::new(Vec::new()));
        let seen = times.clone();
        let mut script: VecDeque<Outcome> = script.into();
        let poll = move || {
            seen.lock().unwrap().push(t0.elapsed().as_secs());
            let outcome = script
                .pop_front()
                .unwrap_or(Outcome::Pending(LoginPending { interval: 5 }));
            std::future::ready(Ok(PollDeviceLoginResponse { outcome: Some(outcome) }))
        };
        (poll, times)
    }

    #[tokio::test(start_paused = true)]
    async fn waits_the_interval_and_5_s_more_after_each_slow_down() {
        let pending = Outcome::Pending(LoginPending { interval: 5 });
        let linked = LinkedIdentity {
            display_name: "Li Wei".into(),
            ..Default::default()
        };
        let (poll, times) = scripted(vec![
            pending.clone(),
            Outcome::SlowDown(SlowDown { interval: 10 }),
            pending,
            Outcome::SlowDown(SlowDown { interval: 15 }),
            Outcome::Linked(linked.clone()),
        ]);
        let mut poller = DevicePoller::new(&started(5, 600));
        assert_eq!(poller.run(poll).await.unwrap(), LoginEnd::Linked(linked));
        assert_eq!(*times.lock().unwrap(), vec![5, 10, 20, 30, 45]);
        assert_eq!(poller.interval(), Duration::from_secs(15));
        assert_eq!(poller.polls(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_on_denied_and_expired() {
        let (poll, _) = scripted(vec![Outcome::Denied(Default::default())]);
        assert_eq!(
            DevicePoller::new(&started(5, 600)).run(poll).await.unwrap(),
            LoginEnd::Denied
        );
        let (poll, _) = scripted(vec![Outcome::Expired(Default::default())]);
        assert_eq!(
            DevicePoller::new(&started(5, 600)).run(poll).await.unwrap(),
            LoginEnd::Expired
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_codes_expire_without_polling_past_them() {
        let (poll, times) = scripted(vec![]);
        let mut poller = DevicePoller::new(&started(5, 12));
        assert_eq!(poller.run(poll).await.unwrap(), LoginEnd::GaveUp);
        assert_eq!(*times.lock().unwrap(), vec![5, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_polling_through_a_link_that_is_down_and_returns_other_errors() {
        let mut answers: VecDeque<Result<PollDeviceLoginResponse, Status>> = VecDeque::from(vec![
            Err(Status::unavailable("link down")),
            Err(Status::not_found("no such login")),
        ]);
        let mut poller = DevicePoller::new(&started(1, 600));
        let err = poller
            .run(|| std::future::ready(answers.pop_front().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(poller.polls(), 2);
    }
}
