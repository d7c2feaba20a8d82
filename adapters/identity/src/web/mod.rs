//! The reference identity provider's verification page (`verification_uri`): where the driver
//! enters the code the car shows, or lands with it pre-filled from the QR code, then approves
//! or denies linking their social account. Plain HTTP on its own listener (a real provider
//! serves it over HTTPS on its own domain).
//!
//! - `GET /device[?user_code=XXXX-XXXX]`: the code form.
//! - `POST /device` (`user_code`, `csrf`): checks the code; the consent page.
//! - `POST /device/decision` (`user_code`, `csrf`, `decision` = approve | deny, `display_name`).
//!
//! Forgery: every form carries a fresh random token that must equal the `device_csrf` cookie
//! set with it (double submit; the cookie is `SameSite=Strict` and `HttpOnly`), so another
//! site cannot post a decision in the driver's name; without it a POST is 403.
//! Guessing: wrong codes are limited per client address and in all ([`GuessLimits`]); beyond
//! that a POST is 429. Bodies are at most [`MAX_FORM_BYTES`].

mod guesses;
mod pages;

use cookie::{Cookie, SameSite};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use subtle::ConstantTimeEq;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use guesses::{GuessLimiter, GuessLimits, Limited};
pub use pages::field;

use crate::codes;
use crate::logins::{CodeLookup, Decision, DeviceLogins, MAX_DISPLAY_NAME_CHARS, provider_name};

/// Largest form body accepted; the forms are a few short fields.
pub const MAX_FORM_BYTES: usize = 4 * 1024;

/// The cookie holding the anti-forgery token of the form last served.
pub const CSRF_COOKIE: &str = "device_csrf";

#[derive(Clone)]
struct Page {
    logins: DeviceLogins,
    guesses: Arc<Mutex<GuessLimiter>>,
}

/// The verification page's routes, sharing `logins` with the gRPC service.
pub fn router(logins: DeviceLogins, limits: GuessLimits) -> Router {
    let page = Page {
        logins,
        guesses: Arc::new(Mutex::new(GuessLimiter::new(limits))),
    };
    Router::new()
        .route("/device", get(show_form).post(submit_code))
        .route("/device/decision", post(decide))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(page)
}

/// Serves the page on `listener` until `shutdown` completes. Client addresses (for the guess
/// limits) are the TCP peers': behind a reverse proxy, limit there or read its header instead.
pub async fn serve_page(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .context("verification page server failed")
}

#[derive(Deserialize)]
struct Prefill {
    user_code: Option<String>,
}

#[derive(Deserialize)]
struct CodeForm {
    #[serde(default)]
    user_code: String,
    #[serde(default)]
    csrf: String,
}

#[derive(Deserialize)]
struct DecisionForm {
    #[serde(default)]
    user_code: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    display_name: String,
}

/// A form carrying the anti-forgery token it was served with.
trait WithToken {
    /// The token, from the form's hidden `csrf` field.
    fn csrf(&self) -> &str;
}

impl WithToken for CodeForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl WithToken for DecisionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// A posted form whose token equals the cookie's ([`token_matches`]): only such a form reaches a
/// handler, so none can forget the check; any other is answered as [`forged`].
struct Unforged<T>(T);

impl<S, T> FromRequest<S> for Unforged<T>
where
    S: Send + Sync,
    T: DeserializeOwned + WithToken + Send,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let headers = request.headers().clone();
        let Form(form) = Form::<T>::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if token_matches(&headers, form.csrf()) {
            Ok(Unforged(form))
        } else {
            Err(forged())
        }
    }
}

async fn show_form(Query(prefill): Query<Prefill>) -> Response {
    // Only something that could be a code is put back in the form.
    let prefill = prefill
        .user_code
        .filter(|c| c.chars().count() <= codes::MAX_USER_CODE_INPUT_CHARS)
        .unwrap_or_default();
    with_new_token(StatusCode::OK, |csrf| pages::enter_code(&prefill, csrf, None))
}

async fn submit_code(
    State(page): State<Page>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Unforged(form): Unforged<CodeForm>,
) -> Response {
    let canonical = match page.check_code(peer.ip(), &form.user_code) {
        Ok(canonical) => canonical,
        Err(refusal) => return *refusal,
    };
    match page.logins.lookup(&canonical) {
        CodeLookup::Pending(login) => with_new_token(StatusCode::OK, |csrf| {
            pages::consent(provider_name(login.provider), &login.masked_vin, &canonical, csrf)
        }),
        other => page.refuse(peer.ip(), other),
    }
}

async fn decide(
    State(page): State<Page>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Unforged(form): Unforged<DecisionForm>,
) -> Response {
    let decision = match form.decision.as_str() {
        "approve" => {
            let name = form.display_name.trim();
            if name.is_empty() || name.chars().count() > MAX_DISPLAY_NAME_CHARS || name.chars().any(char::is_control) {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    "Check the account name",
                    &format!(
                        "The account name must be 1 to {MAX_DISPLAY_NAME_CHARS} characters, without control characters."
                    ),
                );
            }
            Decision::Approve {
                display_name: name.to_owned(),
            }
        }
        "deny" => Decision::Deny,
        _ => return refusal(StatusCode::BAD_REQUEST, "Choose", "Choose Approve or Deny."),
    };
    let canonical = match page.check_code(peer.ip(), &form.user_code) {
        Ok(canonical) => canonical,
        Err(refusal) => return *refusal,
    };
    let linked = matches!(decision, Decision::Approve { .. });
    match page.logins.decide(&canonical, decision) {
        Ok(login) => Html(pages::done(linked, provider_name(login.provider)).into_string()).into_response(),
        Err(other) => page.refuse(peer.ip(), other),
    }
}

impl Page {
    /// The canonical code typed, if this client may submit one now and it could be a code.
    fn check_code(&self, client: IpAddr, typed: &str) -> Result<String, Box<Response>> {
        let admitted = self
            .guesses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(client, Instant::now());
        match admitted {
            Ok(()) => {}
            Err(Limited::Client) => {
                return Err(Box::new(refusal(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many wrong codes",
                    "Too many wrong codes from this network. Wait a minute, then try again.",
                )));
            }
            Err(Limited::Everyone) => {
                return Err(Box::new(refusal(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many wrong codes",
                    "Too many wrong codes are being tried right now. Wait a minute, then try again.",
                )));
            }
        }
        codes::normalise_user_code(typed).ok_or_else(|| {
            Box::new(with_new_token(StatusCode::UNPROCESSABLE_ENTITY, |csrf| {
                pages::enter_code(
                    typed,
                    csrf,
                    Some("That is not a code: it has 8 letters, like BCDF-GHJK."),
                )
            }))
        })
    }

    /// The page for a code that is not pending; a code that never existed counts as a guess.
    fn refuse(&self, client: IpAddr, lookup: CodeLookup) -> Response {
        match lookup {
            CodeLookup::Unknown => {
                self.guesses
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .wrong(client, Instant::now());
                with_new_token(StatusCode::NOT_FOUND, |csrf| {
                    pages::enter_code(
                        "",
                        csrf,
                        Some("No car is waiting for that code. Check it and try again."),
                    )
                })
            }
            CodeLookup::Expired => refusal(
                StatusCode::GONE,
                "This code has expired",
                "This code has expired. Start the sign-in again in your car for a new one.",
            ),
            CodeLookup::Answered => refusal(
                StatusCode::CONFLICT,
                "Already answered",
                "This code has already been used. Start the sign-in again in your car if you need to.",
            ),
            CodeLookup::Pending(_) => refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Try again",
                "Something went wrong; try again.",
            ),
        }
    }
}

/// A page rendered with a fresh anti-forgery token, which is also set as the cookie.
fn with_new_token(status: StatusCode, render: impl FnOnce(&str) -> Markup) -> Response {
    // A device code's randomness: 256 bits from the OS, hex.
    let token = codes::new_device_code();
    let cookie = Cookie::build((CSRF_COOKIE, token.as_str()))
        .path("/device")
        .http_only(true)
        .same_site(SameSite::Strict)
        .build();
    let mut response = (status, Html(render(&token).into_string())).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Whether the form's token equals the cookie's (compared in constant time).
fn token_matches(headers: &HeaderMap, submitted: &str) -> bool {
    let sent = headers
        .get_all(header::COOKIE)
        .into_iter()
        .filter_map(|v| v.to_str().ok());
    let expected = sent
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == CSRF_COOKIE);
    match expected {
        Some(expected) if !expected.value().is_empty() => {
            bool::from(expected.value().as_bytes().ct_eq(submitted.as_bytes()))
        }
        _ => false,
    }
}

fn forged() -> Response {
    refusal(
        StatusCode::FORBIDDEN,
        "Form expired",
        "This form could not be checked (missing or stale token). Open the page again and resubmit.",
    )
}

fn refusal(status: StatusCode, title: &str, text: &str) -> Response {
    (status, Html(pages::problem(title, text).into_string())).into_response()
}
