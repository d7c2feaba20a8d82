//! Fixtures for the end-to-end tests: a throwaway PKI, partners over mTLS, the gateway, cars
//! (agents, stock MQTT clients and byte-level ones) and child processes, all real and on
//! 127.0.0.1 port 0. Every listener is bound once, on port 0, and handed over; nothing picks a
//! "free" port for someone else to bind later.
//!
//! A test reads like what happens on the road:
//!
//! ```no_run
//! # use integration_tests::*;
//! # async fn example() {
//! let platform = Platform::start().await; // PKI, parking partner, gateway
//! let car = platform.agent(VIN_A).await; // a connected vehicle agent
//! let mut app = in_car_app(&car).await; // an app on the car's local endpoint
//! let session = park_from_the_app(&mut app).await;
//! assert_eq!(platform.parking.charges(), 0, "{session:?} is not paid yet");
//! # }
//! ```
//!
//! The modules, by role:
//! - [`pki`]: certificates of every role ([`TestPki`], [`Credentials`]).
//! - [`partner`]: partners the gateway calls ([`start_parking`], [`start_partner`],
//!   [`start_navigation`]) and what a driver asks of them ([`parking_at_the_bund`]).
//! - [`stand_in`]: the reference parking adapter behind faults a test scripts or steers
//!   ([`ScriptedParking`], [`SteeredParking`]).
//! - [`described`]: a partner for a service known only by its `.proto`, compiled at test time
//!   ([`compile_proto`], [`start_described_partner`]).
//! - [`platform`]: the gateway in front of a partner ([`Platform`]), its configuration and
//!   database ([`gateway_config`], [`storage_url`]), a port kept across restarts ([`KeptPort`]).
//! - [`car`]: cars: agents ([`Platform::agent`]), apps on them ([`in_car_app`]), stock MQTT
//!   clients ([`RawCar`], [`mqtt_client`]) and byte-level ones ([`WireCar`]).
//! - [`wire`]: request and response envelopes ([`envelope`], [`status_code`]).
//! - [`wait`]: bounded waits on what can be observed ([`within`], [`eventually`],
//!   [`connack`], [`next_incoming`], [`disconnected`]); never a sleep as synchronisation.
//! - [`process`]: the binaries cargo built for this run, as child processes that can be
//!   killed with SIGKILL and restarted on the same socket ([`Process`], [`built_binary!`]).
//! - [`postgres`]: the local PostgreSQL, which the tests that need it require loudly.
//! - [`social_login`]: the identity partner and its verification page ([`start_identity`],
//!   [`identity_entry`]) and the car's side of a device login ([`sign_in_app`],
//!   [`start_login_from_the_app`], [`DevicePoller`]).
//! - [`browser`]: headless Chromium ([`browser::Chromium`]), required loudly.

pub mod browser;
pub mod car;
pub mod described;
pub mod partner;
pub mod pki;
pub mod platform;
pub mod postgres;
pub mod process;
pub mod social_login;
pub mod stand_in;
pub mod wait;
pub mod wire;

pub use car::*;
pub use described::*;
pub use partner::*;
pub use pki::*;
pub use platform::*;
pub use postgres::*;
pub use process::*;
pub use social_login::*;
pub use stand_in::*;
pub use wait::*;
pub use wire::*;

/// Installs the process's one crypto provider and a test log subscriber.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
    });
}

/// A name no other test of any process uses at the same time: `{pid}_{nanos}_{n}`.
pub fn unique_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    format!("{}_{}_{}", std::process::id(), nanos, N.fetch_add(1, Ordering::Relaxed))
}
