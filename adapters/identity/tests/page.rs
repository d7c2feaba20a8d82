//! The verification page over real HTTP: the QR link pre-fills the code, the driver approves
//! or denies, forged posts are refused, wrong codes are rate-limited, expired codes say so,
//! and everything rendered is escaped.

mod common;

use std::time::Duration;

use common::{Adapter, CAR, start};
use identity_adapter::GuessLimits;
use identity_adapter::logins::RETAINED_AFTER_EXPIRY;
use identity_adapter::web::{CSRF_COOKIE, MAX_FORM_BYTES};
use proto::social_login::v1::poll_device_login_response::Outcome;
use proto::social_login::v1::{LoginDenied, LoginPending, SocialProvider};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};

/// A page as a browser holds it: its status, HTML and the anti-forgery cookie it set.
struct Page {
    status: StatusCode,
    html: String,
    cookie: Option<String>,
}

impl Page {
    async fn of(response: reqwest::Response) -> Page {
        let cookie = response
            .headers()
            .get(SET_COOKIE)
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
        Page {
            status: response.status(),
            cookie,
            html: response.text().await.unwrap(),
        }
    }

    /// The value of the hidden `csrf` field.
    fn token(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let start = self.html.find(marker).expect("a form with a token") + marker.len();
        self.html[start..].split('"').next().unwrap().to_owned()
    }

    /// Posts `fields` plus this page's token to `path`, with its cookie.
    async fn submit(&self, adapter: &Adapter, path: &str, fields: &[(&str, &str)]) -> Page {
        let token = self.token();
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf", &token));
        let request = reqwest::Client::new()
            .post(format!("{}{path}", adapter.page))
            .header(COOKIE, self.cookie.clone().expect("a cookie"))
            .form(&form);
        Page::of(request.send().await.unwrap()).await
    }

    /// Approves the login of `user_code` for the account `display_name`, with this page's token.
    async fn approve(&self, adapter: &Adapter, user_code: &str, display_name: &str) -> Page {
        let fields = [
            ("user_code", user_code),
            ("decision", "approve"),
            ("display_name", display_name),
        ];
        self.submit(adapter, "/device/decision", &fields).await
    }

    /// Denies the login of `user_code`, with this page's token.
    async fn deny(&self, adapter: &Adapter, user_code: &str) -> Page {
        let fields = [("user_code", user_code), ("decision", "deny")];
        self.submit(adapter, "/device/decision", &fields).await
    }
}

async fn get(url: &str) -> Page {
    Page::of(reqwest::get(url).await.unwrap()).await
}

#[tokio::test]
async fn the_qr_link_prefills_the_code_and_approving_links_the_car() {
    let mut adapter = start(GuessLimits::default()).await;
    let login = adapter.start_login(CAR).await;
    let form = get(&login.verification_uri_complete).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.html.contains(&format!(r#"value="{}""#, login.user_code)),
        "{}",
        form.html
    );
    let cookie = form.cookie.clone().unwrap();
    assert!(cookie.starts_with(&format!("{CSRF_COOKIE}=")), "{cookie}");

    // Typed in lower case, without the dash, with spaces: the same code.
    let typed = format!(" {} ", login.user_code.replace('-', "").to_lowercase());
    let consent = form.submit(&adapter, "/device", &[("user_code", &typed)]).await;
    assert_eq!(consent.status, StatusCode::OK);
    assert!(
        consent
            .html
            .contains("Link your WeChat account to car LSV**********3294?"),
        "{}",
        consent.html
    );
    assert!(!consent.html.contains(CAR), "the page shows the whole VIN");

    let done = consent.approve(&adapter, &login.user_code, "Li <b>Wei</b>").await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.html);
    assert!(done.html.contains("Your WeChat account is linked"), "{}", done.html);

    let Outcome::Linked(identity) = adapter.poll(CAR, &login.device_code).await.unwrap() else {
        panic!("not linked");
    };
    assert_eq!(identity.provider, SocialProvider::Wechat as i32);
    assert_eq!(identity.display_name, "Li <b>Wei</b>");

    // The code is used up: a second decision is refused, and nothing changes.
    let again = consent.deny(&adapter, &login.user_code).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(matches!(
        adapter.poll(CAR, &login.device_code).await.unwrap(),
        Outcome::Linked(_)
    ));
}

#[tokio::test]
async fn denying_tells_the_car_access_denied() {
    let mut adapter = start(GuessLimits::default()).await;
    let login = adapter.start_login(CAR).await;
    let form = get(&format!("{}/device", adapter.page)).await;
    assert!(form.html.contains(r#"name="user_code" value="""#), "{}", form.html);
    let consent = form
        .submit(&adapter, "/device", &[("user_code", &login.user_code)])
        .await;
    let done = consent.deny(&adapter, &login.user_code).await;
    assert_eq!(done.status, StatusCode::OK);
    assert!(done.html.contains("Nothing was linked"), "{}", done.html);
    assert_eq!(
        adapter.poll(CAR, &login.device_code).await.unwrap(),
        Outcome::Denied(LoginDenied {})
    );
}

#[tokio::test]
async fn a_post_without_the_forms_token_is_refused() {
    let mut adapter = start(GuessLimits::default()).await;
    let login = adapter.start_login(CAR).await;
    let client = reqwest::Client::new();
    let decision = [
        ("user_code", login.user_code.as_str()),
        ("decision", "approve"),
        ("display_name", "Mallory"),
    ];
    // No token at all, as another site's form would post.
    let forged = client
        .post(format!("{}/device/decision", adapter.page))
        .form(&decision)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    // A token in the form that is not the cookie's.
    let form = get(&format!("{}/device", adapter.page)).await;
    let mut with_wrong_token = decision.to_vec();
    with_wrong_token.push((
        "csrf",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ));
    let wrong = client
        .post(format!("{}/device/decision", adapter.page))
        .header(COOKIE, form.cookie.clone().unwrap())
        .form(&with_wrong_token)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    // The code form too.
    let code_only = client
        .post(format!("{}/device", adapter.page))
        .form(&[("user_code", login.user_code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(code_only.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        adapter.poll(CAR, &login.device_code).await.unwrap(),
        Outcome::Pending(LoginPending { interval: 5 })
    );
}

#[tokio::test]
async fn after_5_wrong_codes_a_minute_even_the_right_code_waits() {
    let mut adapter = start(GuessLimits::default()).await;
    let login = adapter.start_login(CAR).await;
    let form = get(&format!("{}/device", adapter.page)).await;
    for _ in 0..5 {
        // A well-formed code nobody was given (the real one is excluded by its letters).
        let guess = if login.user_code == "BBBB-BBBB" {
            "CCCC-CCCC"
        } else {
            "BBBB-BBBB"
        };
        let wrong = form.submit(&adapter, "/device", &[("user_code", guess)]).await;
        assert_eq!(wrong.status, StatusCode::NOT_FOUND);
        assert!(wrong.html.contains("No car is waiting for that code"), "{}", wrong.html);
    }
    let limited = form
        .submit(&adapter, "/device", &[("user_code", &login.user_code)])
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.html.contains("Wait a minute"), "{}", limited.html);
    // The decision form is held to the same limit.
    let decided = form.approve(&adapter, &login.user_code, "x").await;
    assert_eq!(decided.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        adapter.poll(CAR, &login.device_code).await.unwrap(),
        Outcome::Pending(LoginPending { interval: 5 })
    );
}

#[tokio::test]
async fn wrong_codes_from_everyone_together_are_limited_too() {
    let limits = GuessLimits {
        per_client: 100,
        global: 3,
        window: Duration::from_secs(60),
    };
    let mut adapter = start(limits).await;
    let login = adapter.start_login(CAR).await;
    let form = get(&format!("{}/device", adapter.page)).await;
    let guess = if login.user_code == "BBBB-BBBB" {
        "CCCC-CCCC"
    } else {
        "BBBB-BBBB"
    };
    for _ in 0..3 {
        let wrong = form.submit(&adapter, "/device", &[("user_code", guess)]).await;
        assert_eq!(wrong.status, StatusCode::NOT_FOUND);
    }
    let limited = form
        .submit(&adapter, "/device", &[("user_code", &login.user_code)])
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.html.contains("being tried right now"), "{}", limited.html);
}

#[tokio::test]
async fn an_expired_code_says_so_and_a_malformed_one_is_not_a_guess() {
    let mut adapter = start(GuessLimits::default()).await;
    let login = adapter.start_login(CAR).await;
    let form = get(&login.verification_uri_complete).await;
    for _ in 0..10 {
        let malformed = form.submit(&adapter, "/device", &[("user_code", "AEIOU")]).await;
        assert_eq!(malformed.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(malformed.html.contains("That is not a code"), "{}", malformed.html);
    }
    adapter.clock.advance(Duration::from_secs(600));
    let expired = form
        .submit(&adapter, "/device", &[("user_code", &login.user_code)])
        .await;
    assert_eq!(expired.status, StatusCode::GONE);
    assert!(expired.html.contains("This code has expired"), "{}", expired.html);
    // Once forgotten it is an unknown code like any other.
    adapter.clock.advance(RETAINED_AFTER_EXPIRY);
    adapter.start_login(CAR).await;
    let forgotten = form
        .submit(&adapter, "/device", &[("user_code", &login.user_code)])
        .await;
    assert_eq!(forgotten.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn what_anyone_types_is_rendered_as_text_and_bounded() {
    let adapter = start(GuessLimits::default()).await;
    let hostile = get(&format!(
        "{}/device?user_code=%22%3E%3Cscript%3Ealert(1)%3C/script%3E",
        adapter.page
    ))
    .await;
    assert_eq!(hostile.status, StatusCode::OK);
    assert!(!hostile.html.contains("<script>"), "{}", hostile.html);
    assert!(hostile.html.contains("&quot;&gt;&lt;script&gt;"), "{}", hostile.html);
    // Too long to be a code: not put back in the form.
    let long = get(&format!("{}/device?user_code={}", adapter.page, "B".repeat(33))).await;
    assert!(!long.html.contains(&"B".repeat(33)));

    let form = get(&format!("{}/device", adapter.page)).await;
    let undecided = form
        .submit(
            &adapter,
            "/device/decision",
            &[("user_code", "BCDF-GHJK"), ("decision", "maybe")],
        )
        .await;
    assert_eq!(undecided.status, StatusCode::BAD_REQUEST);
    let long_name = "n".repeat(65);
    let named = form.approve(&adapter, "BCDF-GHJK", &long_name).await;
    assert_eq!(named.status, StatusCode::BAD_REQUEST);
    assert!(named.html.contains("1 to 64 characters"), "{}", named.html);
    let huge = "x".repeat(MAX_FORM_BYTES + 1);
    let too_big = form.submit(&adapter, "/device", &[("user_code", &huge)]).await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
}
