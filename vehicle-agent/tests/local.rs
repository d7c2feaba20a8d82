//! The in-car gRPC server with a stub in place of the gateway link.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Code, Status};

use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{GetReceiptRequest, Receipt};
use proto::raw::RawClient;
use vehicle_agent::local::{self, AppCall, Caller};

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    payload: Bytes,
    timeout: Duration,
    key: Option<String>,
    request_id: Option<String>,
}

/// Records each call and answers with a fixed result.
struct Stub {
    seen: Mutex<Vec<Seen>>,
    answer: Result<Bytes, (Code, &'static str)>,
}

impl Caller for Stub {
    fn call(&self, call: AppCall) -> BoxFuture<'static, Result<Bytes, Status>> {
        let AppCall {
            method,
            payload,
            timeout,
            ids,
        } = call;
        self.seen.lock().unwrap().push(Seen {
            method: method.to_string(),
            payload,
            timeout,
            key: ids.idempotency_key,
            request_id: ids.request_id,
        });
        let answer = self.answer.clone().map_err(|(code, msg)| Status::new(code, msg));
        Box::pin(async move { answer })
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(7);

struct Server {
    addr: std::net::SocketAddr,
    stub: Arc<Stub>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn serve(answer: Result<Bytes, (Code, &'static str)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stub = Arc::new(Stub {
        seen: Mutex::new(vec![]),
        answer,
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = local::LocalServer {
        caller: stub.clone(),
        services: vec!["parking.v1.ParkingPayment".into(), "karaoke.v1.Karaoke".into()],
        api: None,
        default_timeout: DEFAULT_TIMEOUT,
    };
    let task = tokio::spawn(server.serve_tcp(listener, async {
        let _ = stopped.await;
    }));
    Server { addr, stub, stop, task }
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn forwards_path_bytes_deadline_and_key() {
    common::install_provider();
    let receipt = Receipt {
        receipt_id: "r-1".into(),
        lot_name: "Lot A".into(),
        ..Default::default()
    };
    let server = serve(Ok(receipt.encode_to_vec().into())).await;
    let mut client = ParkingPaymentClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();

    let mut request = tonic::Request::new(GetReceiptRequest {
        receipt_id: "r-1".into(),
    });
    request.set_timeout(Duration::from_secs(3));
    request
        .metadata_mut()
        .insert("idempotency-key", "intent-1".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-request-id", "app-req-1".parse().unwrap());
    let got = client.get_receipt(request).await.unwrap().into_inner();
    assert_eq!(got, receipt);

    // No deadline from the app: the configured default; no key: none.
    client
        .get_receipt(GetReceiptRequest {
            receipt_id: "r-2".into(),
        })
        .await
        .unwrap();

    let seen = server.stub.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "/parking.v1.ParkingPayment/GetReceipt");
    assert_eq!(
        seen[0].payload,
        Bytes::from(
            GetReceiptRequest {
                receipt_id: "r-1".into()
            }
            .encode_to_vec()
        )
    );
    assert_eq!(seen[0].key.as_deref(), Some("intent-1"));
    assert_eq!(seen[0].request_id.as_deref(), Some("app-req-1"));
    assert!(
        seen[0].timeout <= Duration::from_secs(3) && seen[0].timeout >= Duration::from_millis(2900),
        "{:?}",
        seen[0].timeout
    );
    assert_eq!(seen[1].timeout, DEFAULT_TIMEOUT);
    assert_eq!(seen[1].key, None);
    assert_eq!(seen[1].request_id, None);
    server.stop().await;
}

#[tokio::test]
async fn any_method_of_a_configured_service_is_forwarded_raw() {
    common::install_provider();
    let server = serve(Ok(Bytes::from_static(b"\x01\x02"))).await;
    let mut app = RawClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let got = app
        .unary(
            "/parking.v1.ParkingPayment/FutureMethod",
            tonic::Request::new(Bytes::from_static(b"raw")),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, Bytes::from_static(b"\x01\x02"));
    let seen = server.stub.seen.lock().unwrap().clone();
    assert_eq!(seen[0].method, "/parking.v1.ParkingPayment/FutureMethod");
    assert_eq!(seen[0].payload, Bytes::from_static(b"raw"));

    // A service known only by the configuration is forwarded the same way.
    app.unary(
        "/karaoke.v1.Karaoke/Queue",
        tonic::Request::new(Bytes::from_static(b"song")),
    )
    .await
    .unwrap();
    let seen = server.stub.seen.lock().unwrap().clone();
    assert_eq!(seen[1].method, "/karaoke.v1.Karaoke/Queue");
    assert_eq!(seen[1].payload, Bytes::from_static(b"song"));

    // Services not configured are not served at all, and the app is told how to add one.
    let err = app
        .unary("/fuel.v1.Fuel/Pay", tonic::Request::new(Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(
        err.message()
            .starts_with("the vehicle agent does not forward fuel.v1.Fuel: add it to `services`"),
        "{}",
        err.message()
    );
    assert_eq!(server.stub.seen.lock().unwrap().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn the_callers_status_reaches_the_app() {
    common::install_provider();
    let server = serve(Err((
        Code::ResourceExhausted,
        "request payload of 9 bytes exceeds the 8-byte limit",
    )))
    .await;
    let mut client = ParkingPaymentClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let err = client
        .get_receipt(GetReceiptRequest { receipt_id: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "request payload of 9 bytes exceeds the 8-byte limit");
    server.stop().await;
}
