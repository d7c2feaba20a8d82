//! An adapter in a test, as the gateway sees it: its server on a loopback port ([`on_loopback`], [`on_listener`]),
//! a channel to it over mutual TLS ([`mtls_channel`]) and calls carrying the metadata the
//! gateway attaches ([`from_car`], [`from_car_with_key`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Request;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::metadata;

/// The shutdown future [`on_loopback`] gives the server: it completes when the
/// [`OnLoopback`] is dropped.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server on a loopback port; dropping it stops the server.
#[derive(Debug)]
pub struct OnLoopback {
    /// Where it listens: 127.0.0.1 and the port the system chose.
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl OnLoopback {
    /// `http://<addr>`, where a plaintext client connects.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds 127.0.0.1 port 0 and spawns `serve` on the listener, with a [`Shutdown`] that completes
/// when the returned [`OnLoopback`] is dropped.
///
/// The listener is bound before the server task starts, so clients can connect at once: a test
/// needs no sleep to wait for the server.
pub async fn on_loopback<F, Served>(serve: F) -> OnLoopback
where
    F: FnOnce(TcpListener, Shutdown) -> Served,
    Served: Future + Send + 'static,
    Served::Output: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    on_listener(listener, serve)
}

/// [`on_loopback`] on a listener already bound, for a server whose settings need its address.
pub fn on_listener<F, Served>(listener: TcpListener, serve: F) -> OnLoopback
where
    F: FnOnce(TcpListener, Shutdown) -> Served,
    Served: Future + Send + 'static,
    Served::Output: Send + 'static,
{
    let addr = listener.local_addr().expect("the listener's address");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        Box::pin(async {
            let _ = stopped.await;
        }),
    ));
    OnLoopback { addr, _stop: stop }
}

/// A channel to the server at `addr` over TLS, verifying its certificate (issued for
/// `localhost`) against `server_ca_pem` and presenting `client`, a certificate and its key in
/// PEM, if given; `Err` says why it could not connect.
///
/// With TLS 1.3 a server may refuse the client certificate after the client considers the
/// handshake done, so a refusal can also surface on the first call.
pub async fn mtls_channel(
    addr: SocketAddr,
    server_ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca_pem))
        .domain_name("localhost");
    if let Some((cert_pem, key_pem)) = client {
        tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .and_then(|endpoint| endpoint.tls_config(tls))
        .map_err(|e| format!("{e:?}"))?;
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// `message` as the gateway sends it for the car `vin`, without an idempotency key.
pub fn from_car<T>(vin: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(metadata::VIN, vin.parse().expect("a VIN is ASCII"));
    request
}

/// `message` as the gateway sends it for the car `vin` with the idempotency key `key` (and
/// `req-<key>` as its request id).
pub fn from_car_with_key<T>(vin: &str, key: &str, message: T) -> Request<T> {
    let mut request = from_car(vin, message);
    let md = request.metadata_mut();
    md.insert(
        metadata::REQUEST_ID,
        format!("req-{key}").parse().expect("an ASCII key"),
    );
    md.insert(metadata::IDEMPOTENCY_KEY, key.parse().expect("an ASCII key"));
    request
}
