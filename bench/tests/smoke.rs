//! The benchmark, reduced: every scenario against the gateway (in-process, so `cargo test -p
//! fleet-bench` needs no release build) and against Mosquitto when it is installed. It checks
//! that each scenario produced figures and that nothing failed, never how fast anything was
//! (nor how much memory anything took).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use fleet_bench::abuse::AbusePlan;
use fleet_bench::abuser::{Abuse, AbuseSizes};
use fleet_bench::agents::Mix;
use fleet_bench::brokers::{BrokerSetup, GatewayLaunch};
use fleet_bench::journal_cost;
use fleet_bench::phased::PhasedPlan;
use fleet_bench::report::TrafficReport;
use fleet_bench::restart::RestartPlan;
use fleet_bench::revoke::{self, RevokePlan};
use fleet_bench::run::{LedgerRun, Plan, Rates, run, traffic_overrides, write_report};
use fleet_bench::services;
use fleet_bench::swarm::StormSettings;
use fleet_bench::under_storm::UnderStormPlan;

const VEHICLES: usize = 20;

fn assert_clean(what: &str, t: &TrafficReport) {
    let o = &t.outcome;
    assert!(o.sent > 0, "{what} {}: nothing sent", t.load);
    assert_eq!(o.not_sent, 0, "{what} {}: messages not handed to a client", t.load);
    assert_eq!(
        o.errors, 0,
        "{what} {}: error answers, first {:?}",
        t.load, o.first_error
    );
    assert_eq!(o.missing, 0, "{what} {}: unanswered messages", t.load);
    assert_eq!(o.replies, o.sent, "{what} {}", t.load);
    assert!(o.latency.count > 0, "{what} {}: no latency sample", t.load);
    assert!(t.cpu.wall_s > 0.0, "{what} {}: no CPU split", t.load);
}

/// What every scenario needs: rustls's crypto provider, and a directory for its files.
fn setup() -> tempfile::TempDir {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tempfile::tempdir().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_produces_figures_and_no_failures() {
    let work = setup();
    let mosquitto = PathBuf::from("/usr/sbin/mosquitto");
    let mosquitto = mosquitto.exists().then_some(mosquitto);
    let plan = Plan {
        vehicles: VEHICLES,
        active: 5,
        hosts: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        storm: StormSettings {
            max_inflight: 10,
            ..StormSettings::default()
        },
        duration: Duration::from_millis(1000),
        warmup: Duration::from_millis(200),
        rates: Rates {
            echo_rates: vec![50.0],
            request_rates: vec![50.0],
            closed_in_flight: 10,
            agents: 2,
            agent_rates: vec![10.0],
        },
        agent_mix: Mix::default(),
        brokers: BrokerSetup {
            gateway: Some(GatewayLaunch::InProcess),
            adapter_bin: None,
            mosquitto: mosquitto.clone(),
            db_dir: work.path().join("db"),
            read_only_methods: vec!["ListNearbyLots".into(), "GetReceipt".into()],
        },
        ledger_runs: vec![LedgerRun {
            label: "disk".into(),
            db_dir: work.path().join("ledger-db"),
        }],
        registry_wait: Duration::ZERO,
        settle: Duration::ZERO,
        reconnect_rounds: 1,
        under_storm: Some(UnderStormPlan {
            active: 3,
            rate: 50.0,
            duration: Duration::from_millis(500),
            storm: StormSettings {
                max_inflight: 10,
                ..StormSettings::default()
            },
        }),
        restart: Some(RestartPlan {
            vehicles: VEHICLES,
            storm: StormSettings {
                max_inflight: 10,
                ..StormSettings::default()
            },
            request_rate: 20.0,
            before_kill: Duration::from_millis(300),
            after_back: Duration::from_millis(300),
            limit: Duration::from_secs(60),
        }),
        abuse: Some(AbusePlan {
            good_vehicles: VEHICLES,
            request_rate: 20.0,
            event_rate: 20.0,
            abuses: Abuse::ALL.to_vec(),
            abuse_time: Duration::from_millis(1000),
            recovery: Duration::from_millis(200),
            warmup: Duration::from_millis(200),
            sizes: AbuseSizes {
                filters: 300,
                retained_topics: 10,
                topics: 20,
                sockets: 20,
                ..AbuseSizes::default()
            },
            storm: StormSettings {
                max_inflight: 10,
                ..StormSettings::default()
            },
        }),
        gateway_overrides: traffic_overrides(),
        abuse_overrides: Vec::new(),
        command: "cargo test -p fleet-bench".into(),
        notes: Vec::new(),
        verbose: false,
    };
    let report = run(&plan, work.path()).await.expect("the reduced benchmark runs");

    let expected_brokers = if mosquitto.is_some() { 2 } else { 1 };
    assert_eq!(report.brokers.len(), expected_brokers, "brokers measured");
    for b in &report.brokers {
        assert_eq!(b.storms.len(), 2, "{}: full and resumed storms", b.name);
        for s in &b.storms {
            assert_eq!(
                s.connected, VEHICLES,
                "{} {} storm: {:?}",
                b.name, s.kind, s.first_error
            );
            assert_eq!(s.failed_attempts, 0, "{} {} storm: {:?}", b.name, s.kind, s.first_error);
            assert_eq!(s.time_to_connack.count, VEHICLES, "{} {}", b.name, s.kind);
            assert!(s.connects_per_s > 0.0, "{} {}", b.name, s.kind);
        }
        // Fresh TLS configs: the first storm can only do full handshakes.
        assert_eq!(b.storms[0].full_handshakes, VEHICLES as u64, "{}", b.name);
        assert!(b.memory.subscribed_kib > 0, "{}: no RSS figure", b.name);
        assert_eq!(b.memory.rounds_kib.len(), 1, "{}: one extra reconnect round", b.name);
        assert_eq!(b.echo.len(), 2, "{}: one rate and the closed loop", b.name);
        for t in &b.echo {
            assert_clean(&b.name, t);
        }
        assert_eq!(b.lost_connections, 0, "{}: {:?}", b.name, b.first_loss);
        let expected_rounds = if b.name == "gateway" { 2 } else { 1 };
        assert_eq!(
            b.under_storm.len(),
            expected_rounds,
            "{}: traffic during a storm",
            b.name
        );
        for u in &b.under_storm {
            assert_clean(&b.name, &u.traffic);
            assert_eq!(u.storm_connected, u.storm_vehicles, "{}: the storm connected", b.name);
        }
        let restart = b.restart.as_ref().expect("reconnect storm measured");
        assert_eq!(
            restart.reconnected, VEHICLES,
            "{}: every vehicle back after the restart",
            b.name
        );
        assert!(restart.all_back_s.is_some(), "{}", b.name);
        if b.name == "gateway" {
            let p = restart.payments.as_ref().expect("payments across the restart");
            assert!(p.sent > 0, "payments were made");
            assert_eq!((p.lost, p.errors), (0, 0), "no payment lost: {:?}", p.first_error);
        }
    }
    assert_eq!(report.requests.len(), 2, "read-only and ledger request runs");
    for r in &report.requests {
        assert_eq!(r.raw.len(), 2, "{}: one rate and the closed loop", r.setup);
        for t in &r.raw {
            assert_clean("requests", t);
        }
    }
    assert_eq!(report.requests[0].agents.len(), 1, "agent run");
    let mixed = &report.requests[0].agents[0];
    assert_clean("agents", mixed);
    assert!(
        mixed.outcome.per_method.len() >= 2,
        "the agents' mix called several methods: {:?}",
        mixed.outcome.per_method
    );

    assert_eq!(report.abuse.len(), expected_brokers, "abuse scenario on every broker");
    for a in &report.abuse {
        let applicable = Abuse::ALL
            .iter()
            .filter(|x| a.broker == "gateway" || **x != Abuse::Requests)
            .count();
        assert_eq!(a.phases.len(), applicable, "{}: every abuse ran", a.broker);
        for p in &a.phases {
            let what = format!("{} {}", a.broker, p.abuse.name());
            assert!(
                p.rss.before_kib > 0 && p.rss.peak_kib > 0 && p.rss.after_kib > 0,
                "{what}: RSS figures"
            );
            match (&p.abuser, &p.sockets) {
                (Some(abuser), None) => {
                    assert!(abuser.connects > 0, "{what}: the abuser connected: {abuser:?}");
                    assert!(abuser.packets_sent > 0, "{what}: the abuser sent: {abuser:?}");
                }
                (None, Some(s)) => {
                    assert!(s.opened > 0, "{what}: sockets opened: {s:?}");
                    assert!(
                        s.car.attempts > 0 && s.car.connected > 0,
                        "{what}: the car connected: {s:?}"
                    );
                }
                _ => panic!("{what}: neither an abuser nor a socket flood"),
            }
        }
        if a.broker != "gateway" {
            continue;
        }
        assert!(
            a.bounds.is_some() && a.config_file.is_some(),
            "the gateway's config is recorded"
        );
        let baseline = a.baseline.as_ref().expect("baseline without abuse");
        for (what, w) in std::iter::once(("baseline", baseline)).chain(
            a.phases
                .iter()
                .filter_map(|p| p.good.as_ref().map(|g| (p.abuse.name(), g))),
        ) {
            let r = &w.requests;
            assert!(r.sent > 0 && r.latency.count > 0, "{what}: good requests: {r:?}");
            assert_eq!(r.errors, 0, "{what}: good requests failed: {:?}", r.first_error);
            assert!(w.events.published > 0, "{what}: events published: {:?}", w.events);
            assert!(w.events.latency.count > 0, "{what}: events received: {:?}", w.events);
            assert_eq!(w.lost_connections, 0, "{what}: a good car lost its connection");
        }
        // The gateway disconnects at the first offence of these; its registry says why.
        for abuse in [Abuse::Retained, Abuse::LongTopics, Abuse::Qos2] {
            let p = a.phases.iter().find(|p| p.abuse == abuse).unwrap();
            assert!(
                p.disconnect_reasons.keys().any(|r| r.starts_with("limit exceeded")),
                "{}: reasons recorded {:?}",
                abuse.name(),
                p.disconnect_reasons
            );
        }
        let subs = a.phases.iter().find(|p| p.abuse == Abuse::Subscriptions).unwrap();
        let abuser = subs.abuser.as_ref().unwrap();
        assert!(
            abuser.filters_refused > 0,
            "filters beyond the bound refused: {abuser:?}"
        );
    }

    let (json, md) = write_report(&report, &work.path().join("out")).unwrap();
    let markdown = std::fs::read_to_string(md).unwrap();
    assert!(markdown.contains("## Targets from the issue"));
    assert!(markdown.contains("## Abusive car: gateway"));
    let parsed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(parsed["settings"]["vehicles"], VEHICLES);
    assert_eq!(
        parsed["settings"]["closed_in_flight"], 10,
        "the rates stay flat in the settings"
    );
}

/// One round of a phased scenario (one phase per setting), small and short.
fn one_round() -> PhasedPlan {
    PhasedPlan {
        vehicles: 5,
        rate: 50.0,
        phase: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        rounds: 1,
        overrides: traffic_overrides(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_only_service_scenario_answers_both_services() {
    let work = setup();
    let report = services::run(&one_round(), &GatewayLaunch::InProcess, work.path(), "smoke".into())
        .await
        .unwrap();
    assert_eq!(report.phases.len(), 2);
    for phase in &report.phases {
        assert_clean(&phase.service, &phase.traffic);
    }
    let services: Vec<&str> = report.totals.iter().map(|t| t.service.as_str()).collect();
    assert_eq!(services, [services::COMPILED, services::CONFIGURED]);
    assert!(
        report
            .totals
            .iter()
            .all(|t| t.summary.answered > 0 && t.summary.failed == 0)
    );
    assert!(
        report
            .markdown()
            .contains("| `karaoke.v1.Karaoke` | configuration only |")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_cars_are_cut_off_and_stay_out() {
    let work = setup();
    let plan = RevokePlan {
        vehicles: 5,
        interval: Duration::ZERO,
        sample: 3,
        close_limit: Duration::from_secs(30),
        overrides: traffic_overrides(),
    };
    let report = revoke::run(&plan, &GatewayLaunch::InProcess, work.path(), "smoke".into())
        .await
        .unwrap();
    assert_eq!((report.revoked, report.was_connected, report.rpc_failed), (5, 5, 0));
    assert_eq!((report.closed, report.not_closed), (5, 0));
    assert_eq!((report.rpc.count, report.to_close.count), (5, 5));
    assert_eq!(
        report.recorded_reasons.get("certificate revoked"),
        Some(&5),
        "{report:?}"
    );
    assert_eq!(report.listed_revocations, 5);
    for (what, r) in [("resumed", &report.resumed), ("full", &report.full)] {
        assert_eq!(
            (r.tried, r.not_authorized, r.accepted, r.other),
            (3, 3, 0, 0),
            "{what}: {r:?}"
        );
    }
    assert_eq!(report.resumed.resumed_handshakes, 3, "the same TLS config resumes");
    assert_eq!(report.full.resumed_handshakes, 0, "a fresh TLS config does not");
    assert!(report.markdown().contains("| call to the car's socket closed | 5 |"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_cost_scenario_records_only_with_the_journal_on() {
    let work = setup();
    let report = journal_cost::run(&one_round(), &GatewayLaunch::InProcess, work.path(), "smoke".into())
        .await
        .unwrap();
    let settings: Vec<bool> = report.phases.iter().map(|p| p.journal).collect();
    assert_eq!(settings, [false, true]);
    for phase in &report.phases {
        assert_clean(&format!("journal {}", phase.journal), &phase.traffic);
    }
    assert!(
        report
            .totals
            .iter()
            .all(|t| t.summary.answered > 0 && t.summary.failed == 0)
    );
    assert!(report.requests_with_journal > 0);
    assert_eq!(
        report.journal_request_rows,
        Some(report.requests_with_journal),
        "every request of the phase with the journal on, none of the other"
    );
    assert!(report.markdown().contains("| on |"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["vehicles"], 5, "the load stays at the report's top level");
    assert!(
        json["totals"][0]["p99_ms"].is_number() && json["totals"][0]["p99_range_ms"].is_array(),
        "the figures stay flat in each setting's totals: {}",
        json["totals"][0]
    );
}
