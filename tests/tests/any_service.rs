//! A partner service added by configuration alone: its `.proto` is one no Rust code of ours
//! mentions, written and compiled at test time; a partner serves it; the gateway gets a
//! `[[partners]]` entry and the agent a line in `services`; an in-car app calls it over the
//! real wire, and so does `vehicle-agent call` from the descriptor set an operator installs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use prost_reflect::{DynamicMessage, Value};
use tonic::Code;

use gateway::config::PartnerConfig;
use integration_tests::*;
use proto::raw::RawClient;
use vehicle_agent::Agent;

const KARAOKE: &str = "karaoke.v1.Karaoke";
const QUEUE: &str = "/karaoke.v1.Karaoke/Queue";

const KARAOKE_PROTO: &str = r#"
syntax = "proto3";

package karaoke.v1;

// A karaoke bar's queue: a song for the car's passengers.
service Karaoke {
  rpc Queue(QueueRequest) returns (QueueReply);
}

message QueueRequest {
  string song = 1;
  uint32 singers = 2;
}

message QueueReply {
  string song = 1;
  uint32 position = 2;
  // Who the partner was told is asking, and under which key.
  string vin = 3;
  string idempotency_key = 4;
}
"#;

/// The gateway and the parking partner, a karaoke partner known to the gateway by
/// configuration only, and a car whose agent forwards both services.
struct KaraokeBar {
    platform: Platform,
    contract: CompiledContract,
    /// Calls the karaoke partner received.
    calls: Arc<AtomicU32>,
    car: Agent,
    _karaoke: RunningPartner,
}

impl KaraokeBar {
    async fn open() -> KaraokeBar {
        let (platform, [listener]) = Platform::start_beside([&|pki, addr| PartnerConfig {
            name: Some("karaoke".into()),
            read_only_methods: vec![],
            ..partner_entry(pki, KARAOKE, addr)
        }])
        .await;
        let contract = compile_proto(&platform.pki.path("protos"), "karaoke/v1/karaoke.proto", KARAOKE_PROTO);
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let karaoke = start_described_partner(
            &platform.pki,
            listener,
            contract.service(KARAOKE),
            Arc::new(move |method, request, metadata| {
                let position = counted.fetch_add(1, Ordering::SeqCst) + 1;
                let text = |name: &str| {
                    metadata
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let mut reply = DynamicMessage::new(method.output());
                reply.set_field_by_name("song", request.get_field_by_name("song").unwrap().into_owned());
                reply.set_field_by_name("position", Value::U32(position));
                reply.set_field_by_name("vin", Value::String(text("x-vehicle-vin")));
                reply.set_field_by_name("idempotency_key", Value::String(text("idempotency-key")));
                Ok(reply)
            }),
        );
        let car = platform.agent_forwarding(VIN_A, &[KARAOKE]).await;
        KaraokeBar {
            platform,
            contract,
            calls,
            car,
            _karaoke: karaoke,
        }
    }

    /// `Queue(song)` as an in-car app sends it: a client built from the descriptors alone.
    async fn queue_from_an_app(&self, song: &str, key: &str) -> Result<DynamicMessage, tonic::Status> {
        let method = self
            .contract
            .service(KARAOKE)
            .methods()
            .find(|m| m.name() == "Queue")
            .unwrap();
        let mut request = DynamicMessage::new(method.input());
        request.set_field_by_name("song", Value::String(song.into()));
        request.set_field_by_name("singers", Value::U32(2));
        let mut call = tonic::Request::new(Bytes::from(request.encode_to_vec()));
        call.metadata_mut().insert("idempotency-key", key.parse().unwrap());
        let reply = raw_app(&self.car).await.unary(QUEUE, call).await?;
        Ok(DynamicMessage::decode(method.output(), reply.into_inner()).expect("a QueueReply"))
    }
}

/// An app on `car`'s local endpoint calling methods by path, without generated code.
async fn raw_app(car: &Agent) -> RawClient {
    RawClient::connect(format!("http://{}", car.local_addr()))
        .await
        .expect("connect to the agent")
}

fn field(message: &DynamicMessage, name: &str) -> Value {
    message.get_field_by_name(name).unwrap().into_owned()
}

#[tokio::test]
async fn an_app_calls_a_service_added_by_configuration_alone() {
    let bar = KaraokeBar::open().await;
    let reply = bar.queue_from_an_app("Yesterday", "queue-yesterday-1").await.unwrap();
    assert_eq!(field(&reply, "song"), Value::String("Yesterday".into()));
    assert_eq!(field(&reply, "position"), Value::U32(1));
    // The partner hears who asks from the gateway, as for a compiled-in service.
    assert_eq!(field(&reply, "vin"), Value::String(VIN_A.into()));
    assert_eq!(
        field(&reply, "idempotency_key"),
        Value::String("queue-yesterday-1".into())
    );

    // The ledger keeps it to one partner call per intent, for any service.
    let again = bar.queue_from_an_app("Yesterday", "queue-yesterday-1").await.unwrap();
    assert_eq!(again, reply);
    assert_eq!(bar.calls.load(Ordering::SeqCst), 1);

    // The parking service is served beside it.
    let mut parking = in_car_app(&bar.car).await;
    parking.list_nearby_lots(lots_near_the_bund(1)).await.unwrap();
}

#[tokio::test]
async fn a_service_the_agent_is_not_told_of_is_unimplemented_with_the_way_to_add_it() {
    let bar = KaraokeBar::open().await;
    let car = bar.platform.agent_forwarding(VIN_B, &[]).await;
    let err = raw_app(&car)
        .await
        .unary(QUEUE, tonic::Request::new(Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("add it to `services`"), "{}", err.message());
    assert_eq!(bar.calls.load(Ordering::SeqCst), 0);
}

const TOKEN: &str = "karaoke-app-token-0123456789";

/// Runs `vehicle-agent` (as cargo built it for this run) against the bar's car, as the app
/// holding [`TOKEN`]; its exit code, stdout and stderr.
async fn vehicle_agent(bar: &KaraokeBar, args: &[&str]) -> (Option<i32>, String, String) {
    let agent = format!("http://{}", bar.car.local_addr());
    let mut cmd = tokio::process::Command::new(built_binary!("vehicle-agent").path);
    cmd.args(args)
        .args(["--agent", &agent, "--app-token", TOKEN])
        .env_remove("AGENT_DESCRIPTOR_SETS")
        .kill_on_drop(true);
    let out = within(Duration::from_secs(30), cmd.output(), "vehicle-agent answers")
        .await
        .expect("run vehicle-agent");
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn vehicle_agent_call_and_result_read_json_by_the_installed_descriptor_set() {
    let bar = KaraokeBar::open().await;
    let pb = bar.contract.descriptor_set.to_str().unwrap().to_owned();
    let json = r#"{"song": "Yesterday", "singers": 2}"#;

    // Without the descriptor set the shell cannot type the request, and says what to give it.
    let (code, _, err) = vehicle_agent(&bar, &["call", QUEUE, json]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("no method /karaoke.v1.Karaoke/Queue") && err.contains("--descriptor-set FILE"),
        "{err}"
    );
    assert_eq!(bar.calls.load(Ordering::SeqCst), 0);

    let call = [
        "call",
        QUEUE,
        json,
        "--descriptor-set",
        &pb,
        "--request-id",
        "karaoke-1",
    ];
    let (code, out, err) = vehicle_agent(&bar, &call).await;
    assert_eq!(code, Some(0), "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(reply["song"], "Yesterday");
    assert_eq!(reply["position"], 1);
    assert_eq!(reply["vin"], VIN_A);

    let (code, out, err) = vehicle_agent(&bar, &["result", "karaoke-1", "--descriptor-set", &pb]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("DONE OK\n") && out.contains("\"song\": \"Yesterday\""),
        "{out}"
    );
    let (code, out, _) = vehicle_agent(&bar, &["result", "karaoke-1"]).await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains("give its descriptor set with --descriptor-set FILE"),
        "{out}"
    );
}
