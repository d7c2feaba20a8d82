//! `verification_uri_complete` as a QR code for a terminal: the demo prints it where a car's
//! screen would show it, so a phone can scan it. A car's UI renders the same URL with its own
//! QR code widget; this module is small enough to copy.

use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;

/// `url` as a QR code in Unicode half blocks (two modules per character row), dark on light
/// with the quiet zone, ready to print on a terminal. Err for a URL too long for a QR code.
pub fn terminal_qr(url: &str) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::new(url.as_bytes())?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verification_uri_renders_as_half_block_rows() {
        let qr = terminal_qr("http://127.0.0.1:50081/device?user_code=BCDF-GHJK").unwrap();
        let rows: Vec<&str> = qr.lines().collect();
        // A version 3 code is 29 modules, plus a 4-module quiet zone on each side: 37 wide,
        // 37 tall in 19 rows of two.
        assert!(rows.len() >= 15, "{qr}");
        let width = rows[0].chars().count();
        assert!(rows.iter().all(|r| r.chars().count() == width), "{qr}");
        assert!(qr.chars().all(|c| matches!(c, ' ' | '▀' | '▄' | '█' | '\n')), "{qr}");
    }

    #[test]
    fn a_url_too_long_for_a_qr_code_is_an_error() {
        assert!(terminal_qr(&"x".repeat(8_000)).is_err());
    }
}
