//! Headless Chromium, driven over the DevTools protocol (chromiumoxide), for tests of pages a
//! driver uses on their phone. Needs Debian's `chromium` (`/usr/bin/chromium`); without it the
//! test fails saying how to install it, it never passes by skipping. Runs as root, so without
//! Chromium's sandbox, and with a profile directory of its own that goes with it.

use std::path::Path;
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig, BrowserConfigBuilder};
use chromiumoxide::element::Element;
use chromiumoxide::page::{Page, ScreenshotParams};
use futures::StreamExt as _;
use tokio::task::JoinHandle;

use crate::wait::within;

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium; dropping it kills the browser.
pub struct Chromium {
    browser: Browser,
    handler: JoinHandle<()>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Launches it, or panics saying how to install it.
    pub async fn launch() -> Chromium {
        Chromium::launch_with(|config| config).await
    }

    /// [`Chromium::launch`], with `tweak` adding to the configuration (flags, window size).
    pub async fn launch_with(tweak: impl FnOnce(BrowserConfigBuilder) -> BrowserConfigBuilder) -> Chromium {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: this test drives headless Chromium. Install it with \
             `apt-get update && apt-get install -y chromium` (scripts/test.sh does it when missing)"
        );
        let profile = tempfile::tempdir().expect("a profile directory");
        let config = BrowserConfig::builder()
            .chrome_executable(CHROMIUM)
            .no_sandbox()
            .user_data_dir(profile.path())
            // chromiumoxide adds the leading `--` itself.
            .arg("disable-gpu")
            .arg("disable-dev-shm-usage")
            .launch_timeout(Duration::from_secs(30));
        let config = tweak(config).build().expect("a Chromium configuration");
        let (browser, mut events) = Browser::launch(config)
            .await
            .unwrap_or_else(|e| panic!("launch {CHROMIUM} headless: {e}"));
        // The protocol's messages flow only while someone drives the handler.
        let handler = tokio::spawn(async move { while events.next().await.is_some() {} });
        Chromium {
            browser,
            handler,
            _profile: profile,
        }
    }

    /// A tab that has loaded `url`.
    pub async fn open(&self, url: &str) -> Page {
        let page = within(
            Duration::from_secs(30),
            self.browser.new_page(url),
            "Chromium opens the page",
        )
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
        within(Duration::from_secs(30), page.wait_for_navigation(), "the page loads")
            .await
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
        page
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.handler.abort();
    }
}

/// What `expression` (JavaScript) gives on `page` once it gives a string: checked every few
/// milliseconds while the page loads or changes, failing the test after 30 s. Errors while a
/// navigation replaces the document count as "not yet".
pub async fn once_shown(page: &Page, expression: &str, what: &str) -> String {
    within(
        Duration::from_secs(30),
        async {
            loop {
                if let Ok(result) = page.evaluate(expression).await
                    && let Ok(Some(text)) = result.into_value::<Option<String>>()
                {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
        what,
    )
    .await
}

/// The text of the element `selector` on `page`, once the page shows it.
pub async fn text_of(page: &Page, selector: &str) -> String {
    let expression = format!("document.querySelector({selector:?})?.innerText ?? null");
    once_shown(page, &expression, &format!("the page shows {selector}")).await
}

/// Waits until `page` shows no element `selector` (one it showed went away, say).
pub async fn gone(page: &Page, selector: &str) {
    let expression = format!("document.querySelector({selector:?}) ? null : 'gone'");
    once_shown(page, &expression, &format!("{selector} goes from the page")).await;
}

/// What `expression` (JavaScript) gives on `page`, as a string (`null` and `undefined` as
/// `None`), evaluated once: for state the page holds rather than shows.
pub async fn evaluate(page: &Page, expression: &str) -> Option<String> {
    page.evaluate(expression)
        .await
        .unwrap_or_else(|e| panic!("evaluate {expression}: {e}"))
        .into_value::<Option<String>>()
        .unwrap_or_else(|e| panic!("{expression} gives no string: {e}"))
}

/// A PNG of what `page` shows in its window (CDP `Page.captureScreenshot`).
pub async fn screenshot(page: &Page) -> Vec<u8> {
    within(
        Duration::from_secs(30),
        page.screenshot(ScreenshotParams::builder().build()),
        "Chromium takes a screenshot",
    )
    .await
    .unwrap_or_else(|e| panic!("screenshot: {e}"))
}

/// The `value` of the input `selector` on `page` (what the user sees in the field), once shown.
pub async fn input_value(page: &Page, selector: &str) -> String {
    let expression = format!("document.querySelector({selector:?})?.value ?? null");
    once_shown(page, &expression, &format!("the page shows the field {selector}")).await
}

/// Clicks the element `selector` (a real mouse click where it is shown), once the page shows it.
pub async fn click(page: &Page, selector: &str) {
    text_of(page, selector).await;
    mouse_click(page, selector, "click").await;
}

/// Types `text` into the input `selector`, replacing what it held.
pub async fn fill(page: &Page, selector: &str, text: &str) {
    input_value(page, selector).await;
    let clear = format!("document.querySelector({selector:?}).value = ''");
    page.evaluate(clear)
        .await
        .unwrap_or_else(|e| panic!("clear {selector}: {e}"));
    mouse_click(page, selector, "focus")
        .await
        .type_str(text)
        .await
        .unwrap_or_else(|e| panic!("type into {selector}: {e}"));
}

/// Clicks the element `selector`, shown on `page`, with the mouse (to `what` it); the element.
async fn mouse_click(page: &Page, selector: &str, what: &str) -> Element {
    let element = page
        .find_element(selector)
        .await
        .unwrap_or_else(|e| panic!("{selector}: {e}"));
    element
        .click()
        .await
        .unwrap_or_else(|e| panic!("{what} {selector}: {e}"));
    element
}
