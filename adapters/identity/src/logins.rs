//! Device logins in flight: the RFC 8628 state machine, shared by the gRPC service (the car)
//! and the verification page (the driver).
//!
//! A login is pending until the driver approves or denies it on the page, or until it expires.
//! The car polls it; a poll sooner than the login's interval is answered SLOW_DOWN and grows the
//! interval by 5 s for every later poll (RFC 8628 §3.5). Logins live in memory, bounded: at most
//! [`LoginSettings::max_logins`] held in all, at most [`LoginSettings::max_pending_per_car`]
//! pending for one car, each forgotten [`RETAINED_AFTER_EXPIRY`] after it expired (swept when a
//! login starts). A restart forgets them all, which costs a driver one more scan; a real
//! provider keeps them in its database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use proto::social_login::v1::poll_device_login_response::Outcome;
use proto::social_login::v1::{
    LinkedIdentity, LoginDenied, LoginExpired, LoginPending, SlowDown, SocialProvider, StartDeviceLoginResponse,
};

use crate::clock::Clock;
use crate::codes;

/// How long an answered or expired login is still reported to polls before it is forgotten
/// (then NOT_FOUND): long enough for a car that lost an answer to ask again.
pub const RETAINED_AFTER_EXPIRY: Duration = Duration::from_secs(10 * 60);

/// What RFC 8628 §3.5 says a slow_down adds to the interval.
pub const SLOW_DOWN_STEP_SECS: u32 = 5;

/// The interval never grows past this, however often a car polls too fast.
pub const MAX_INTERVAL_SECS: u32 = 300;

/// Longest display name a driver may give on the consent page.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;

/// Bounds and timings of device logins; every field has a safe default.
#[derive(Debug, Clone)]
pub struct LoginSettings {
    /// What `verification_uri` says: the page where drivers enter codes.
    pub verification_uri: String,
    /// How long codes live (RFC 8628 `expires_in`). Default 10 minutes.
    pub expires_in: Duration,
    /// The first polling interval (RFC 8628 `interval`), whole seconds, at least 1. Default 5 s.
    pub interval: Duration,
    /// Logins held at once, all cars together (pending, answered or expired and not yet
    /// forgotten). Beyond it StartDeviceLogin is RESOURCE_EXHAUSTED. Default 10,000.
    pub max_logins: usize,
    /// Pending logins one car may have at once. Default 3.
    pub max_pending_per_car: usize,
}

impl LoginSettings {
    /// The defaults, with the page at `verification_uri`.
    pub fn new(verification_uri: impl Into<String>) -> LoginSettings {
        LoginSettings {
            verification_uri: verification_uri.into(),
            expires_in: Duration::from_secs(600),
            interval: Duration::from_secs(5),
            max_logins: 10_000,
            max_pending_per_car: 3,
        }
    }
}

/// Why a login could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRefused {
    /// [`LoginSettings::max_logins`] logins are held.
    Full,
    /// This car has [`LoginSettings::max_pending_per_car`] logins pending.
    TooManyForCar,
}

/// No login with that device code for this car (unknown, another car's, or forgotten).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotFound;

/// A pending login as the verification page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    /// The provider the car asked for.
    pub provider: SocialProvider,
    /// The car's VIN with all but its maker code and last 4 characters hidden.
    pub masked_vin: String,
}

/// What the page learns about a user code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeLookup {
    /// Waiting for the driver.
    Pending(PendingLogin),
    /// It was valid but has expired.
    Expired,
    /// It was already approved or denied.
    Answered,
    /// No such code: a wrong guess.
    Unknown,
}

/// The driver's answer on the consent page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Link this account (display name as typed, already checked).
    Approve {
        /// The name the account shows.
        display_name: String,
    },
    /// Do not link.
    Deny,
}

enum State {
    Pending,
    Denied,
    Linked(LinkedIdentity),
}

struct Login {
    vin: String,
    provider: SocialProvider,
    user_code: String,
    expires_ms: i64,
    interval_secs: u32,
    last_poll_ms: Option<i64>,
    state: State,
    idempotency_key: Option<String>,
}

impl Login {
    fn pending_at(&self, now: i64) -> bool {
        matches!(self.state, State::Pending) && now < self.expires_ms
    }
}

#[derive(Default)]
struct Held {
    by_device_code: HashMap<String, Login>,
    /// Canonical user code -> device code, for every login held.
    by_user_code: HashMap<String, String>,
    /// (VIN, idempotency key) -> device code, for retried StartDeviceLogin calls.
    by_intent: HashMap<(String, String), String>,
}

/// Every device login in flight; clones share them.
#[derive(Clone)]
pub struct DeviceLogins {
    settings: Arc<LoginSettings>,
    clock: Arc<dyn Clock>,
    held: Arc<Mutex<Held>>,
}

impl DeviceLogins {
    /// No logins yet.
    pub fn new(settings: LoginSettings, clock: Arc<dyn Clock>) -> DeviceLogins {
        DeviceLogins {
            settings: Arc::new(settings),
            clock,
            held: Arc::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &LoginSettings {
        &self.settings
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // Every change below is a few map updates that cannot half-fail; keep serving.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a login for `vin` with `provider`, or returns the one the same (VIN, key) started.
    pub fn start(
        &self,
        vin: &str,
        idempotency_key: Option<&str>,
        provider: SocialProvider,
    ) -> Result<StartDeviceLoginResponse, StartRefused> {
        let now = self.clock.now_unix_ms();
        let mut held = self.held();
        // A retry of the same intent gets the same login while it lives.
        let retried = idempotency_key
            .and_then(|key| held.by_intent.get(&(vin.to_owned(), key.to_owned())))
            .and_then(|code| held.by_device_code.get_key_value(code))
            .filter(|(_, login)| now < login.expires_ms);
        if let Some((code, login)) = retried {
            return Ok(self.answer(code, login, now));
        }
        held.sweep(now);
        if held.by_device_code.len() >= self.settings.max_logins {
            return Err(StartRefused::Full);
        }
        let pending_for_car = held
            .by_device_code
            .values()
            .filter(|l| l.vin == vin && l.pending_at(now))
            .count();
        if pending_for_car >= self.settings.max_pending_per_car {
            return Err(StartRefused::TooManyForCar);
        }
        let device_code = codes::new_device_code();
        // 20^8 codes against at most max_logins held: a clash is rare, and retried.
        let user_code = loop {
            let code = codes::new_user_code();
            if !held.by_user_code.contains_key(&code) {
                break code;
            }
        };
        let expires_ms = now.saturating_add(duration_ms(self.settings.expires_in));
        let login = Login {
            vin: vin.to_owned(),
            provider,
            user_code: user_code.clone(),
            expires_ms,
            interval_secs: interval_secs(self.settings.interval),
            last_poll_ms: None,
            state: State::Pending,
            idempotency_key: idempotency_key.map(str::to_owned),
        };
        let answer = self.answer(&device_code, &login, now);
        if let Some(key) = idempotency_key {
            held.by_intent
                .insert((vin.to_owned(), key.to_owned()), device_code.clone());
        }
        held.by_user_code.insert(user_code, device_code.clone());
        held.by_device_code.insert(device_code, login);
        Ok(answer)
    }

    fn answer(&self, device_code: &str, login: &Login, now: i64) -> StartDeviceLoginResponse {
        let user_code = codes::display_user_code(&login.user_code);
        let remaining_ms = (login.expires_ms - now).max(0);
        StartDeviceLoginResponse {
            device_code: device_code.to_owned(),
            verification_uri: self.settings.verification_uri.clone(),
            verification_uri_complete: format!("{}?user_code={user_code}", self.settings.verification_uri),
            user_code,
            expires_in: u32::try_from((remaining_ms + 999) / 1_000).unwrap_or(u32::MAX),
            interval: login.interval_secs,
        }
    }

    /// How the login `device_code` of `vin` stands; NOT_FOUND for any other car's.
    pub fn poll(&self, vin: &str, device_code: &str) -> Result<Outcome, NotFound> {
        let now = self.clock.now_unix_ms();
        let mut held = self.held();
        let login = held
            .by_device_code
            .get_mut(device_code)
            .filter(|login| login.vin == vin)
            .ok_or(NotFound)?;
        match &login.state {
            State::Linked(identity) => return Ok(Outcome::Linked(identity.clone())),
            State::Denied => return Ok(Outcome::Denied(LoginDenied {})),
            State::Pending if now >= login.expires_ms => return Ok(Outcome::Expired(LoginExpired {})),
            State::Pending => {}
        }
        let interval_ms = i64::from(login.interval_secs) * 1_000;
        // A car that waits exactly `interval` after each answer can still arrive a little early
        // (network jitter); do not punish that.
        let leeway_ms = (interval_ms / 5).min(1_000);
        let too_soon = login
            .last_poll_ms
            .is_some_and(|last| now - last + leeway_ms < interval_ms);
        login.last_poll_ms = Some(now);
        if too_soon {
            login.interval_secs = (login.interval_secs + SLOW_DOWN_STEP_SECS).min(MAX_INTERVAL_SECS);
            return Ok(Outcome::SlowDown(SlowDown {
                interval: login.interval_secs,
            }));
        }
        Ok(Outcome::Pending(LoginPending {
            interval: login.interval_secs,
        }))
    }

    /// What the user code `canonical` (see [`codes::normalise_user_code`]) stands for.
    pub fn lookup(&self, canonical: &str) -> CodeLookup {
        let now = self.clock.now_unix_ms();
        let held = self.held();
        let Some(login) = held
            .by_user_code
            .get(canonical)
            .and_then(|d| held.by_device_code.get(d))
        else {
            return CodeLookup::Unknown;
        };
        match login.state {
            State::Pending if now >= login.expires_ms => CodeLookup::Expired,
            State::Pending => CodeLookup::Pending(PendingLogin {
                provider: login.provider,
                masked_vin: mask_vin(&login.vin),
            }),
            State::Denied | State::Linked(_) => CodeLookup::Answered,
        }
    }

    /// Records the driver's answer to the pending login of `canonical`; what the code stood for
    /// otherwise.
    pub fn decide(&self, canonical: &str, decision: Decision) -> Result<PendingLogin, CodeLookup> {
        let now = self.clock.now_unix_ms();
        let mut held = self.held();
        let Some(login) = held
            .by_user_code
            .get(canonical)
            .cloned()
            .and_then(|d| held.by_device_code.get_mut(&d))
        else {
            return Err(CodeLookup::Unknown);
        };
        match login.state {
            State::Pending if now >= login.expires_ms => return Err(CodeLookup::Expired),
            State::Pending => {}
            State::Denied | State::Linked(_) => return Err(CodeLookup::Answered),
        }
        login.state = match decision {
            Decision::Deny => State::Denied,
            Decision::Approve { display_name } => State::Linked(LinkedIdentity {
                provider: login.provider.into(),
                subject_id: format!("{}-{}", subject_prefix(login.provider), &codes::new_device_code()[..16]),
                display_name,
                link_token: codes::new_device_code(),
            }),
        };
        tracing::info!(vin = %login.vin, provider = provider_name(login.provider), approved = matches!(login.state, State::Linked(_)), "device login answered");
        Ok(PendingLogin {
            provider: login.provider,
            masked_vin: mask_vin(&login.vin),
        })
    }

    /// Logins held now (pending, answered, or expired and not yet forgotten).
    pub fn held_count(&self) -> usize {
        self.held().by_device_code.len()
    }
}

impl Held {
    /// Forgets logins [`RETAINED_AFTER_EXPIRY`] past their expiry, with their indexes.
    fn sweep(&mut self, now: i64) {
        let retained_ms = duration_ms(RETAINED_AFTER_EXPIRY);
        let forgotten: Vec<String> = self
            .by_device_code
            .iter()
            .filter(|(_, login)| now >= login.expires_ms.saturating_add(retained_ms))
            .map(|(code, _)| code.clone())
            .collect();
        for code in forgotten {
            if let Some(login) = self.by_device_code.remove(&code) {
                self.by_user_code.remove(&login.user_code);
                if let Some(key) = login.idempotency_key {
                    self.by_intent.remove(&(login.vin, key));
                }
            }
        }
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn interval_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs())
        .unwrap_or(MAX_INTERVAL_SECS)
        .clamp(1, MAX_INTERVAL_SECS)
}

/// A VIN as the consent page shows it: the maker code and the last 4 characters
/// (`LSV**********3294`), enough for a driver to recognise their car, not to copy its VIN.
pub fn mask_vin(vin: &str) -> String {
    let chars: Vec<char> = vin.chars().collect();
    if chars.len() < 8 {
        return "*".repeat(chars.len());
    }
    let hidden = chars.len() - 7;
    chars[..3]
        .iter()
        .chain(std::iter::repeat_n(&'*', hidden))
        .chain(&chars[chars.len() - 4..])
        .collect()
}

/// The provider's name as drivers know it.
pub fn provider_name(provider: SocialProvider) -> &'static str {
    match provider {
        SocialProvider::Wechat => "WeChat",
        SocialProvider::Alipay => "Alipay",
        SocialProvider::Weibo => "Weibo",
        SocialProvider::Unspecified => "social",
    }
}

fn subject_prefix(provider: SocialProvider) -> &'static str {
    match provider {
        SocialProvider::Wechat => "wx",
        SocialProvider::Alipay => "alipay",
        SocialProvider::Weibo => "weibo",
        SocialProvider::Unspecified => "social",
    }
}

#[cfg(test)]
mod tests;
