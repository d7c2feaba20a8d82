//! The verification page's HTML, written with maud, which escapes every value it renders: a
//! user code or a display name typed by anyone reaches the page as text, never as markup.

use maud::{DOCTYPE, Markup, html};

/// The field names and element ids the forms use (the browser test finds them by these).
pub mod field {
    /// The user code input.
    pub const USER_CODE: &str = "user_code";
    /// The hidden anti-forgery token.
    pub const CSRF: &str = "csrf";
    /// The display name input on the consent page.
    pub const DISPLAY_NAME: &str = "display_name";
    /// The button's name on the consent page; its value is `approve` or `deny`.
    pub const DECISION: &str = "decision";
}

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Carlink sign-in" }
            }
            body {
                main { (body) }
            }
        }
    }
}

/// The form where the driver enters the code their car shows, pre-filled from the QR code.
pub fn enter_code(prefill: &str, csrf: &str, problem: Option<&str>) -> Markup {
    page(
        "Enter the code",
        html! {
            h1 { "Link an account to your car" }
            p { "Enter the code your car shows (8 letters, like BCDF-GHJK)." }
            @if let Some(problem) = problem {
                p id="problem" role="alert" { (problem) }
            }
            form method="post" action="/device" {
                input type="hidden" name=(field::CSRF) value=(csrf);
                label for=(field::USER_CODE) { "Code" }
                input id=(field::USER_CODE) name=(field::USER_CODE) value=(prefill)
                    autocomplete="off" autocapitalize="characters" maxlength="32" required;
                button id="continue" type="submit" { "Continue" }
            }
        },
    )
}

/// Asks the driver to approve linking their (fake) social account to the car.
pub fn consent(provider: &str, masked_vin: &str, user_code: &str, csrf: &str) -> Markup {
    let question = format!("Link your {provider} account to car {masked_vin}?");
    page(
        &question,
        html! {
            h1 id="question" { (question) }
            p { "The car will be able to act as this account. This is the reference provider: the account is a demo account, name it as you like." }
            form method="post" action="/device/decision" {
                input type="hidden" name=(field::CSRF) value=(csrf);
                input type="hidden" name=(field::USER_CODE) value=(user_code);
                label for=(field::DISPLAY_NAME) { "Account name" }
                input id=(field::DISPLAY_NAME) name=(field::DISPLAY_NAME) value="Demo Driver" maxlength="64" required;
                button id="approve" type="submit" name=(field::DECISION) value="approve" { "Approve" }
                button id="deny" type="submit" name=(field::DECISION) value="deny" formnovalidate { "Deny" }
            }
        },
    )
}

/// The end of the flow: what happened, and that the car will know.
pub fn done(linked: bool, provider: &str) -> Markup {
    let (title, text) = if linked {
        (
            "Linked",
            format!("Your {provider} account is linked. Return to your car."),
        )
    } else {
        ("Not linked", "Nothing was linked. Your car has been told.".to_owned())
    };
    page(
        title,
        html! {
            h1 id="outcome" { (title) }
            p { (text) }
        },
    )
}

/// Something went wrong; `text` says what and what to do.
pub fn problem(title: &str, text: &str) -> Markup {
    page(
        title,
        html! {
            h1 { (title) }
            p id="problem" role="alert" { (text) }
            p { a href="/device" { "Enter a code" } }
        },
    )
}
