//! The operators' web dashboard on the gateway's ops listener, in a real browser (headless
//! Chromium) over real TLS: an operator signs in with a one-time link asked for with their
//! certificate; a car connects and appears without a reload, its request shows in its
//! timeline, and revoking it from the page removes it and ends its connection. Without
//! credentials the page and its API answer 401, a sign-in link works once, and an open live
//! feed ends when the gateway stops.
//!
//! `SAVE_SCREENSHOT=1` writes the dashboard with cars connected to `docs/images/dashboard.png`
//! (the README shows it); without it the screenshot is taken and checked but written nowhere.

use std::sync::Arc;

use base64::Engine as _;
use chromiumoxide::handler::viewport::Viewport;
use gateway::DisconnectReason;
use integration_tests::browser::{Chromium, click, evaluate, gone, once_shown, screenshot, text_of};
use integration_tests::*;
use proto::fleet::v1::CreateDashboardLinkRequest;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The platform with its ops listener on, and a fresh one-time sign-in link from operator alice.
async fn ops_platform() -> (Platform, String) {
    let platform = Platform::start_with_pki(|pki, config| config.ops = integration_tests::platform::ops(pki)).await;
    let link = platform
        .fleet_ops(&platform.pki.operator("alice"))
        .await
        .create_dashboard_link(CreateDashboardLinkRequest { valid_seconds: 300 })
        .await
        .expect("alice gets a dashboard link")
        .into_inner();
    (platform, link.url)
}

/// Headless Chromium that accepts the gateway's certificate, at a desktop's size.
///
/// The gateway's certificate chains to the test PKI's root, which Chromium does not know, and
/// no flag adds a root for server certificates (Linux Chromium reads roots from an NSS database
/// in the user's home, shared with everything else). `--ignore-certificate-errors-spki-list`
/// accepts exactly one key instead, the gateway's, so every other certificate is still checked,
/// unlike `--ignore-certificate-errors`.
async fn browser_trusting(pki: &TestPki) -> Chromium {
    let pin = spki_sha256_base64(&pki.gateway.pem.cert_pem);
    let size = Viewport {
        width: 1280,
        height: 800,
        ..Viewport::default()
    };
    Chromium::launch_with(|config| {
        config
            .arg(("ignore-certificate-errors-spki-list", pin.as_str()))
            .window_size(size.width, size.height)
            .viewport(size)
    })
    .await
}

/// Base64 of the SHA-256 of the first certificate's SubjectPublicKeyInfo in `chain_pem`: the
/// form Chromium's SPKI list takes.
fn spki_sha256_base64(chain_pem: &str) -> String {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("a PEM certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("a DER certificate");
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The selector of `vin`'s row in the live sessions table.
fn live_row(vin: &str) -> String {
    format!("#live-sessions tbody tr[data-vin=\"{vin}\"]")
}

#[tokio::test]
async fn a_car_appears_its_request_is_in_its_timeline_and_revoking_it_from_the_page_ends_it() {
    let (platform, link) = ops_platform().await;
    let chromium = browser_trusting(&platform.pki).await;
    let page = chromium.open(&link).await;
    // The link redirected to the dashboard, which opened its live feed.
    once_shown(
        &page,
        "document.querySelector('#feed').innerText === 'live' ? 'live' : null",
        "the live feed opens",
    )
    .await;
    assert_eq!(
        evaluate(&page, "location.pathname").await.as_deref(),
        Some("/"),
        "signed in and on the dashboard"
    );
    // Marks this document: if the page reloaded, the mark would be gone.
    page.evaluate("window.carlinkNoReload = 'same document'")
        .await
        .expect("mark the page");

    // (a) Cars connect and appear, pushed over the live feed.
    let (car, mut app) = platform.car_and_app(VIN_A).await;
    let _other_car = platform.agent(VIN_B).await;
    assert_eq!(text_of(&page, &format!("{} td", live_row(VIN_A))).await, VIN_A);
    assert_eq!(text_of(&page, &format!("{} td", live_row(VIN_B))).await, VIN_B);
    once_shown(
        &page,
        "document.querySelector('#live-count').innerText === '2' ? 'two' : null",
        "the count says two cars",
    )
    .await;

    // (b) The car makes a request: it is in the car's timeline once the operator asks for it.
    let parked = park_from_the_app(&mut app).await;
    assert!(!parked.session_id.is_empty());
    // The partner table is filled too before the picture is taken.
    text_of(&page, "#partners tbody tr[data-service=\"parking.v1.ParkingPayment\"]").await;
    click(&page, &format!("{} button[data-action=\"timeline\"]", live_row(VIN_A))).await;
    let row = once_shown(
        &page,
        "[...document.querySelectorAll('#timeline tbody tr[data-kind=\"request\"]')]\
         .map(r => r.innerText).find(t => t.includes('StartSession')) ?? null",
        "the car's StartSession is in its timeline",
    )
    .await;
    assert!(row.contains(VIN_A) && row.contains("OK"), "{row}");
    assert_eq!(text_of(&page, "#timeline-of").await, format!("vehicle {VIN_A}"));
    let png = screenshot(&page).await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    if std::env::var_os("SAVE_SCREENSHOT").is_some_and(|v| v == "1") {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/images/dashboard.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    // (c) Revoked from the page: its row goes, the other car's stays, its connection ends.
    let mut events = platform.connection_events();
    // The page asks for a reason with window.prompt, which headless Chromium cannot answer.
    page.evaluate("window.prompt = () => 'stolen'")
        .await
        .expect("answer the prompt");
    click(&page, &format!("{} button[data-action=\"revoke\"]", live_row(VIN_A))).await;
    assert_eq!(disconnected(&mut events, VIN_A).await, DisconnectReason::Revoked);
    gone(&page, &live_row(VIN_A)).await;
    assert_eq!(text_of(&page, &format!("{} td", live_row(VIN_B))).await, VIN_B);
    let closed = text_of(&page, &format!("#closed-sessions tbody tr[data-vin=\"{VIN_A}\"]")).await;
    assert!(closed.contains(VIN_A), "{closed}");
    assert_eq!(
        evaluate(&page, "window.carlinkNoReload ?? null").await.as_deref(),
        Some("same document"),
        "the page was never reloaded"
    );
    let revoked = platform
        .fleet_ops(&platform.pki.operator("bob"))
        .await
        .list_revocations(proto::fleet::v1::ListRevocationsRequest::default())
        .await
        .expect("bob lists revocations")
        .into_inner()
        .revocations;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!((revoked[0].vin.as_str(), revoked[0].reason.as_str()), (VIN_A, "stolen"));
    // The revoked car's agent lived to here, trying to reconnect and refused.
    drop(car);
}

/// An HTTP/1.1 answer: its status and head (status line and headers).
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// The value of header `name` (lowercase), if the answer has it.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 exchange with the ops listener over TLS, verifying it against the PKI's root
/// and presenting no client certificate, as a browser without one. A hand-written request on a
/// rustls stream: the workspace's reqwest is built without TLS, and giving it TLS would build
/// a second TLS stack (aws-lc-rs) or new crates for this one check.
async fn https(platform: &Platform, method: &str, target: &str, cookie: Option<&str>) -> Answer {
    let mut stream = ops_connection(platform).await;
    send(&mut stream, method, target, cookie).await;
    let mut answer = Vec::new();
    within(SOON, stream.read_to_end(&mut answer), "the ops listener answers")
        .await
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let (head, body) = (head.to_owned(), body.to_owned());
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer}"));
    Answer { status, head, body }
}

type OpsConnection = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to the ops listener, as a browser without a client certificate has.
async fn ops_connection(platform: &Platform) -> OpsConnection {
    let addr = platform.gateway.ops_addr().expect("the ops listener is on");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&platform.pki.ca_cert).expect("read the root") {
        roots.add(cert.expect("a certificate")).expect("a usable root");
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the ops listener");
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake without a client certificate")
}

/// Sends one request (a POST carries `{}`); the connection closes after its answer.
async fn send(stream: &mut OpsConnection, method: &str, target: &str, cookie: Option<&str>) {
    let cookie = cookie.map(|c| format!("cookie: {c}\r\n")).unwrap_or_default();
    let body = if method == "POST" { "{}" } else { "" };
    let request = format!(
        "{method} {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{cookie}\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send the request");
}

/// The path and query of the one-time sign-in `link`, as a request target.
fn sign_in_target(link: &str) -> String {
    link.split_once("/signin")
        .map(|(_, rest)| format!("/signin{rest}"))
        .expect("a sign-in link")
}

/// The session cookie (`name=value`) that following the one-time `link` sets.
async fn signed_in(platform: &Platform, link: &str) -> String {
    let answer = https(platform, "GET", &sign_in_target(link), None).await;
    let set_cookie = answer.header("set-cookie").expect("a session cookie");
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn probes_and_metrics_answer_without_credentials_and_name_no_car() {
    let (platform, _link) = ops_platform().await;
    let _car = platform.agent(VIN_A).await;
    let health = https(&platform, "GET", "/healthz", None).await;
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    assert_eq!(https(&platform, "GET", "/readyz", None).await.status, 200);
    let metrics = https(&platform, "GET", "/metrics", None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{}",
        metrics.head
    );
    assert!(!metrics.body.contains(VIN_A), "no VIN in the metrics");
    let scrape =
        prometheus_parse::Scrape::parse(metrics.body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    let connected = scrape
        .samples
        .iter()
        .find(|s| s.metric == "carlink_vehicles_connected")
        .expect("the connected gauge");
    assert!(
        matches!(connected.value, prometheus_parse::Value::Gauge(v) if v == 1.0),
        "{connected:?}"
    );
}

#[tokio::test]
async fn without_credentials_the_page_and_its_api_answer_401() {
    let (platform, _link) = ops_platform().await;
    let _car = platform.agent(VIN_A).await;
    assert_eq!(https(&platform, "GET", "/", None).await.status, 401);
    assert_eq!(https(&platform, "POST", "/api/ListSessions", None).await.status, 401);
    assert_eq!(https(&platform, "GET", "/api/watch", None).await.status, 401);
    // A cookie nobody issued is no credential either.
    let forged = Some("carlink_ops=0123456789abcdef");
    assert_eq!(https(&platform, "POST", "/api/ListSessions", forged).await.status, 401);
}

/// The page's live feed never ends by itself; the listener's graceful stop waits for every open
/// answer, so the feed must end when the gateway stops, or one open dashboard holds the stop.
#[tokio::test]
async fn an_open_live_feed_ends_when_the_gateway_stops() {
    let (platform, link) = ops_platform().await;
    let cookie = signed_in(&platform, &link).await;
    let mut feed = ops_connection(&platform).await;
    send(&mut feed, "GET", "/api/watch", Some(&cookie)).await;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = within(SOON, feed.read_u8(), "the feed's head")
            .await
            .expect("the feed's head");
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");

    let mut rest = Vec::new();
    let (_platform, _) = within(
        SOON,
        platform.restart_gateway(feed.read_to_end(&mut rest)),
        "the gateway's stop with a live feed open",
    )
    .await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.ends_with("0\r\n\r\n"), "the feed ends as a whole answer: {rest:?}");
}

#[tokio::test]
async fn a_sign_in_link_works_once() {
    let (platform, link) = ops_platform().await;
    let target = sign_in_target(&link);

    let first = https(&platform, "GET", &target, None).await;
    assert!((300..400).contains(&first.status), "{}", first.head);
    assert_eq!(first.header("location"), Some("/"));
    let set_cookie = first.header("set-cookie").expect("a session cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap();
    assert_eq!(https(&platform, "GET", "/", Some(cookie)).await.status, 200);
    assert_eq!(
        https(&platform, "POST", "/api/ListSessions", Some(cookie)).await.status,
        200
    );

    // Used once, the link signs no one in again, whoever holds it.
    let again = https(&platform, "GET", &target, None).await;
    assert_eq!(again.status, 403, "{}", again.head);
    assert_eq!(again.header("set-cookie"), None);
}
