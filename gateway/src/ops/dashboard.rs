//! The ops listener's HTTP side: the dashboard page, its JSON API (each `fleet.v1.FleetOps`
//! method in the proto3 JSON mapping, at `POST /api/{Method}`), its live session feed
//! (server-sent events), the sign-in link, and the unauthenticated probes (`/healthz`,
//! `/readyz`) and `/metrics`.
//!
//! A dashboard request is served for an operator certificate or a valid sign-in cookie only:
//! anything else gets 401 and a page saying how to sign in.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use prost::Message;
use proto::MethodPath;
use proto::fleet::v1::fleet_ops_server::FleetOps;
use proto::json::Contracts;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use cookie::{Cookie, SameSite};

use super::auth::{COOKIE, NotOperator, Operator, SignIns, operator_of};
use super::service::FleetOpsApi;

/// Largest JSON request body the dashboard API reads.
const MAX_API_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct Dashboard {
    api: FleetOpsApi,
    sign_ins: Arc<SignIns>,
    contracts: Arc<Contracts>,
}

/// The HTTP routes of the ops listener.
pub fn routes(api: FleetOpsApi, sign_ins: Arc<SignIns>) -> Router {
    let state = Dashboard {
        api,
        sign_ins,
        contracts: Arc::new(Contracts::compiled()),
    };
    Router::new()
        .route("/", get(page))
        .route("/signin", get(sign_in))
        .route("/api/watch", get(watch))
        .route("/api/{method}", post(call))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The operator a dashboard request comes from: their certificate, or a signed-in cookie.
fn operator(dashboard: &Dashboard, request: &Request) -> Result<Operator, NotOperator> {
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs());
    match operator_of(certs.as_deref().map(Vec::as_slice)) {
        Ok(operator) => return Ok(operator),
        Err(NotOperator::Refused(why)) => return Err(NotOperator::Refused(why)),
        Err(NotOperator::Anonymous) => {}
    }
    cookie(request.headers())
        .and_then(|token| dashboard.sign_ins.session(&token))
        .ok_or(NotOperator::Anonymous)
}

/// The value of the dashboard's session cookie, if the browser sent one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    let sent = headers
        .get_all(header::COOKIE)
        .into_iter()
        .filter_map(|v| v.to_str().ok());
    sent.flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
}

fn refused(why: NotOperator) -> Response {
    let status = match why {
        NotOperator::Anonymous => StatusCode::UNAUTHORIZED,
        NotOperator::Refused(_) => StatusCode::FORBIDDEN,
    };
    let body = format!(
        "<!doctype html><title>Carlink ops: sign in</title><h1>Sign in required</h1><p>{}</p>\
         <p>Ask for a sign-in link with an operator certificate: <code>gateway fleet dashboard-link</code>, \
         or present your operator certificate to this page.</p>",
        html_escape(&why.to_string())
    );
    (status, Html(body)).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn page(State(dashboard): State<Dashboard>, request: Request) -> Response {
    match operator(&dashboard, &request) {
        Ok(_) => (
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Html(include_str!("dashboard.html")),
        )
            .into_response(),
        Err(why) => refused(why),
    }
}

#[derive(serde::Deserialize)]
struct SignInQuery {
    token: String,
}

async fn sign_in(State(dashboard): State<Dashboard>, Query(query): Query<SignInQuery>) -> Response {
    let Some(session) = dashboard.sign_ins.redeem(&query.token) else {
        return refused(NotOperator::Refused(
            "this sign-in link is unknown, used or expired: ask for a new one".into(),
        ));
    };
    let max_age = i64::try_from(dashboard.sign_ins.session_ttl().as_secs()).unwrap_or(i64::MAX);
    let cookie = Cookie::build((COOKIE, session))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(max_age))
        .build();
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn ready(State(dashboard): State<Dashboard>) -> Response {
    match dashboard.api.context().health.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// `GET /metrics`: no VIN or other customer data, so scrapers need no operator certificate.
async fn metrics(State(dashboard): State<Dashboard>) -> Response {
    let text = dashboard.api.context().health.metrics_text().await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// `POST /api/{Method}`: the JSON request of a FleetOps method in, its JSON response out.
async fn call(State(dashboard): State<Dashboard>, Path(method): Path<String>, request: Request) -> Response {
    let operator = match operator(&dashboard, &request) {
        Ok(operator) => operator,
        Err(why) => return refused(why),
    };
    let body = match axum::body::to_bytes(request.into_body(), MAX_API_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "request body over 64 KiB\n").into_response(),
    };
    let Ok(path) = MethodPath::parse(&format!("/fleet.v1.FleetOps/{method}")) else {
        return (StatusCode::NOT_FOUND, "no such method\n").into_response();
    };
    match dispatch(&dashboard, &path, operator, &body).await {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(status) => {
            let code = match status.code() {
                tonic::Code::NotFound | tonic::Code::Unimplemented => StatusCode::NOT_FOUND,
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
                tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let body = serde_json::json!({"code": format!("{:?}", status.code()), "message": status.message()});
            (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
    }
}

/// Decodes `body` as `path`'s JSON request, calls the service as `operator`, encodes the answer.
async fn dispatch(
    dashboard: &Dashboard,
    path: &MethodPath,
    operator: Operator,
    body: &Bytes,
) -> Result<String, tonic::Status> {
    let text = std::str::from_utf8(body).map_err(|_| tonic::Status::invalid_argument("body is not UTF-8"))?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    let encoded = dashboard
        .contracts
        .request_from_json(path, text)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let api = &dashboard.api;
    macro_rules! unary {
        ($($name:literal => $method:ident,)*) => {
            match path.method() {
                $($name => {
                    let message = prost::Message::decode(encoded.as_slice())
                        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
                    let mut request = tonic::Request::new(message);
                    request.extensions_mut().insert(operator);
                    api.$method(request).await?.into_inner().encode_to_vec()
                })*
                other => return Err(tonic::Status::unimplemented(format!("{other} is not served over JSON"))),
            }
        };
    }
    let answer = unary! {
        "ListSessions" => list_sessions,
        "VehicleTimeline" => vehicle_timeline,
        "CustomerTimeline" => customer_timeline,
        "PartnerHealth" => partner_health,
        "KickVehicle" => kick_vehicle,
        "RevokeVehicle" => revoke_vehicle,
        "ListRevocations" => list_revocations,
        "CreateCustomer" => create_customer,
        "GetCustomer" => get_customer,
        "LinkVehicle" => link_vehicle,
        "UnlinkVehicle" => unlink_vehicle,
        "LinkSocialIdentity" => link_social_identity,
        "UnlinkSocialIdentity" => unlink_social_identity,
    };
    dashboard
        .contracts
        .response_to_json(path, &answer)
        .map_err(|e| tonic::Status::internal(e.to_string()))
}

#[derive(serde::Deserialize, Default)]
struct WatchQuery {
    #[serde(default)]
    prefix: String,
}

/// `GET /api/watch`: session changes as server-sent events (`data:` a `SessionChange` in JSON).
async fn watch(State(dashboard): State<Dashboard>, Query(query): Query<WatchQuery>, request: Request) -> Response {
    if let Err(why) = operator(&dashboard, &request) {
        return refused(why);
    }
    let changes = match dashboard.api.watch(&query.prefix) {
        Ok(changes) => changes,
        Err(status) => return (StatusCode::TOO_MANY_REQUESTS, status.message().to_owned()).into_response(),
    };
    let path = MethodPath::parse("/fleet.v1.FleetOps/WatchSessions").expect("a valid method path");
    let contracts = dashboard.contracts.clone();
    let events = changes
        .take_while(|change| std::future::ready(change.is_ok()))
        .filter_map(move |change| {
            let json = change
                .ok()
                .and_then(|c| contracts.response_to_json(&path, &c.encode_to_vec()).ok());
            std::future::ready(json.map(|json| Ok::<_, Infallible>(Event::default().data(json.replace('\n', "")))))
        });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
