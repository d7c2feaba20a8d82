//! Signing in with WeChat from the dashboard, as an in-car app does it: start a device login
//! (OAuth 2.0 device authorization grant, RFC 8628) through the car, show the driver the code,
//! the page and a QR code of the link, and poll by the rules ([`DevicePoller`]) until the
//! driver approves on their phone. With `--once` the demo plays the phone too
//! ([`approve_as_the_drivers_phone`]): the same HTTP requests a browser makes on the page.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use proto::device_login::{DevicePoller, LoginEnd};
use proto::social_login::v1::social_login_client::SocialLoginClient;
use proto::social_login::v1::{
    LinkedIdentity, PollDeviceLoginRequest, PollDeviceLoginResponse, SocialProvider, StartDeviceLoginRequest,
    StartDeviceLoginResponse,
};
use reqwest::header::{COOKIE, SET_COOKIE};
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::Channel;

use crate::journey::{step, timed};

/// The account name the demo's "phone" gives on the consent page.
const DEMO_ACCOUNT: &str = "Demo Driver";

/// Longest one request to the verification page may take.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Steps `first` and `first + 1`: starts the login, shows it, waits for the driver (or, when
/// `once`, approves it itself) and prints the linked account. Never prints the link token.
pub async fn sign_in_with_wechat(app: &mut SocialLoginClient<Channel>, first: u32, once: bool) -> Result<()> {
    let start = StartDeviceLoginRequest {
        provider: SocialProvider::Wechat.into(),
    };
    let (login, took) = timed(app.start_device_login(start)).await?;
    step(first, "StartDeviceLogin", format!("code {}", login.user_code), took);
    println!("     enter {} at {}", login.user_code, login.verification_uri);
    println!("     or scan {}", login.verification_uri_complete);
    match identity_adapter::terminal_qr(&login.verification_uri_complete) {
        Ok(qr) => println!("{qr}"),
        Err(e) => println!("     (no QR code: {e})"),
    }

    let mut poller = DevicePoller::new(&login);
    if once {
        approve_as_the_drivers_phone(&login).await?;
        println!("     the driver's phone opened the link and approved (--once)");
    } else {
        println!(
            "     waiting up to {} s for you to approve in a browser (polling every {} s)",
            login.expires_in,
            poller.interval().as_secs()
        );
    }
    let started = Instant::now();
    let device_code = login.device_code.clone();
    let end = poller
        .run(|| {
            let mut app = app.clone();
            let device_code = device_code.clone();
            async move { poll(&mut app, &device_code).await }
        })
        .await?;
    let outcome = match end {
        LoginEnd::Linked(identity) => format!(
            "linked {} ({}) after {} poll(s)",
            identity.display_name,
            provider_name(&identity),
            poller.polls()
        ),
        LoginEnd::Denied => "denied: nothing was linked".to_owned(),
        LoginEnd::Expired => "the code expired: nothing was linked".to_owned(),
        LoginEnd::GaveUp => "no answer before the code expired: nothing was linked".to_owned(),
    };
    step(first + 1, "PollDeviceLogin", outcome, started.elapsed());
    Ok(())
}

async fn poll(app: &mut SocialLoginClient<Channel>, device_code: &str) -> Result<PollDeviceLoginResponse, Status> {
    let request = PollDeviceLoginRequest {
        device_code: device_code.to_owned(),
    };
    Ok(app.poll_device_login(request).await?.into_inner())
}

fn provider_name(identity: &LinkedIdentity) -> &'static str {
    match SocialProvider::try_from(identity.provider) {
        Ok(SocialProvider::Wechat) => "WeChat",
        Ok(SocialProvider::Alipay) => "Alipay",
        Ok(SocialProvider::Weibo) => "Weibo",
        _ => "an unknown provider",
    }
}

/// What the driver's phone does after scanning the QR code: opens the link (the code is
/// filled in), continues, and approves on the consent page. Each form carries an
/// anti-forgery token that must come back with the cookie set alongside it.
async fn approve_as_the_drivers_phone(login: &StartDeviceLoginResponse) -> Result<()> {
    let browser = reqwest::Client::builder().timeout(PAGE_TIMEOUT).build()?;
    let link = reqwest::Url::parse(&login.verification_uri_complete).context("the QR code's link is not a URL")?;
    let code_form = PageSeen::of(browser.get(link.clone()).send().await?).await?;
    let consent = code_form
        .submit(&browser, link.join("/device")?, &[("user_code", &login.user_code)])
        .await?;
    let done = consent
        .submit(
            &browser,
            link.join("/device/decision")?,
            &[
                ("user_code", &login.user_code),
                ("decision", "approve"),
                ("display_name", DEMO_ACCOUNT),
            ],
        )
        .await?;
    ensure!(
        done.html.contains("is linked"),
        "the page did not confirm the link:\n{}",
        done.html
    );
    Ok(())
}

/// A page of the verification site as a browser holds it: its HTML and the anti-forgery
/// cookie set with its form (the last page has no form, and sets none).
struct PageSeen {
    html: String,
    cookie: Option<String>,
}

impl PageSeen {
    async fn of(response: reqwest::Response) -> Result<PageSeen> {
        let status = response.status();
        let cookie = response
            .headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        let html = response.text().await?;
        if !status.is_success() {
            bail!("the verification page answered {status}:\n{html}");
        }
        Ok(PageSeen { html, cookie })
    }

    /// The value of the form's hidden `csrf` field.
    fn token(&self) -> Result<&str> {
        let marker = r#"name="csrf" value=""#;
        let start = self.html.find(marker).context("the page has no form token")? + marker.len();
        Ok(self.html[start..].split('"').next().unwrap_or_default())
    }

    /// Posts `fields` and this page's token to `url` with its cookie, as submitting its form does.
    async fn submit(&self, browser: &reqwest::Client, url: reqwest::Url, fields: &[(&str, &str)]) -> Result<PageSeen> {
        let cookie = self
            .cookie
            .as_deref()
            .context("the verification page set no anti-forgery cookie")?;
        let mut form = fields.to_vec();
        form.push(("csrf", self.token()?));
        let response = browser.post(url).header(COOKIE, cookie).form(&form).send().await?;
        PageSeen::of(response).await
    }
}
