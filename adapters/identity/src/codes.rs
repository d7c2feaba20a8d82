//! The two codes of a device login (RFC 8628 §6.1): the car's secret `device_code` and the
//! driver's short `user_code`.
//!
//! The user code is read off a dashboard and typed on a phone, so it is 8 letters from an
//! alphabet without vowels (no words) and without look-alikes (no 0/O, 1/I), shown as
//! `XXXX-XXXX`, and compared case-insensitively ignoring the dash and spaces. 20^8 codes are
//! about 34.6 bits: guessable by brute force, hence the rate limits on the verification page.
//! The device code never leaves the car and the adapter: 256 bits, hex, from the OS's CSPRNG.

use rand::TryRngCore as _;
use rand::rngs::OsRng;

/// The letters a user code is made of (RFC 8628 §6.1's example alphabet).
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

/// Letters in a user code, without the dash.
pub const USER_CODE_LEN: usize = 8;

/// Bytes of randomness in a device code.
const DEVICE_CODE_BYTES: usize = 32;

/// Longest device code accepted in a poll; anything longer is INVALID_ARGUMENT unread.
pub const MAX_DEVICE_CODE_CHARS: usize = 128;

/// Longest user code input accepted before normalising (dashes and spaces included).
pub const MAX_USER_CODE_INPUT_CHARS: usize = 32;

/// A new device code: 256 bits from the operating system's CSPRNG, as 64 lowercase hex digits
/// (URL-safe).
pub fn new_device_code() -> String {
    let mut bytes = [0u8; DEVICE_CODE_BYTES];
    // An OS without a working random source cannot issue secrets; failing loudly beats weak codes.
    OsRng.try_fill_bytes(&mut bytes).expect("the OS random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new user code in its canonical form (8 letters, no dash), uniformly from the alphabet.
pub fn new_user_code() -> String {
    let mut code = String::with_capacity(USER_CODE_LEN);
    while code.len() < USER_CODE_LEN {
        let mut byte = [0u8; 1];
        OsRng.try_fill_bytes(&mut byte).expect("the OS random source works");
        // 240 = 12 * 20: rejecting the top 16 values keeps every letter equally likely.
        if byte[0] < 240 {
            code.push(char::from(USER_CODE_ALPHABET[usize::from(byte[0] % 20)]));
        }
    }
    code
}

/// How a canonical user code is shown: `BCDF-GHJK`.
pub fn display_user_code(canonical: &str) -> String {
    if canonical.len() == USER_CODE_LEN && canonical.is_ascii() {
        format!("{}-{}", &canonical[..4], &canonical[4..])
    } else {
        canonical.to_owned()
    }
}

/// The canonical form of what a driver typed: upper case, dashes and spaces dropped; `None`
/// when it cannot be a user code (wrong length, a letter outside the alphabet, too long).
pub fn normalise_user_code(typed: &str) -> Option<String> {
    if typed.chars().count() > MAX_USER_CODE_INPUT_CHARS {
        return None;
    }
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid = code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b));
    valid.then_some(code)
}

/// Whether `code` looks like a device code this adapter issues (hex, the right length), so that
/// garbage is INVALID_ARGUMENT rather than NOT_FOUND.
pub fn is_device_code_shaped(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= MAX_DEVICE_CODE_CHARS
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[test]
    fn user_codes_are_eight_letters_of_the_alphabet_shown_with_a_dash() {
        for _ in 0..1_000 {
            let code = new_user_code();
            assert_eq!(code.len(), USER_CODE_LEN, "{code}");
            assert!(code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)), "{code}");
            let shown = display_user_code(&code);
            assert_eq!(shown.len(), 9);
            assert_eq!(shown.as_bytes()[4], b'-');
            assert_eq!(normalise_user_code(&shown).as_deref(), Some(code.as_str()));
        }
    }

    #[test]
    fn every_letter_of_the_alphabet_is_drawn_about_equally() {
        let mut counts: HashMap<char, u32> = HashMap::new();
        for _ in 0..2_000 {
            for c in new_user_code().chars() {
                *counts.entry(c).or_default() += 1;
            }
        }
        // 16,000 letters, 800 expected each: a biased modulo (256 % 20 = 16 values favoured)
        // would not fail this, but a missing or doubled letter would.
        assert_eq!(counts.len(), 20, "{counts:?}");
        assert!(counts.values().all(|&n| (600..1_000).contains(&n)), "{counts:?}");
    }

    #[test]
    fn user_codes_are_compared_ignoring_case_dashes_and_spaces() {
        for typed in ["BCDF-GHJK", "bcdf-ghjk", "bcdfghjk", " BcDf GhJk ", "B-C-D-F-G-H-J-K"] {
            assert_eq!(normalise_user_code(typed).as_deref(), Some("BCDFGHJK"), "{typed:?}");
        }
        for typed in [
            "",
            "BCDF-GHJ",
            "BCDF-GHJKL",
            "ABCD-EFGH",        // vowels are not in the alphabet
            "BCDF-GHJ0",        // nor digits
            "BCDF-GHJ\u{212A}", // the Kelvin sign upper-cases to nothing of ours
            &"-".repeat(40),    // over the input bound
        ] {
            assert_eq!(normalise_user_code(typed), None, "{typed:?}");
        }
    }

    #[test]
    fn device_codes_carry_256_bits_and_never_repeat() {
        let mut seen = HashSet::new();
        for _ in 0..1_000 {
            let code = new_device_code();
            assert_eq!(code.len(), 64);
            assert!(code.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(is_device_code_shaped(&code));
            assert!(seen.insert(code), "a device code repeated");
        }
        // Every hex digit position varies: no constant prefix or suffix lowers the entropy.
        let codes: Vec<String> = seen.into_iter().take(200).collect();
        for position in 0..64 {
            let distinct: HashSet<u8> = codes.iter().map(|c| c.as_bytes()[position]).collect();
            assert!(
                distinct.len() > 8,
                "position {position} takes {} values",
                distinct.len()
            );
        }
    }

    #[test]
    fn device_code_shape_is_checked_before_lookup() {
        assert!(!is_device_code_shaped(""));
        assert!(!is_device_code_shaped(&"a".repeat(MAX_DEVICE_CODE_CHARS + 1)));
        assert!(!is_device_code_shaped("abc def"));
        assert!(is_device_code_shaped("abc-def_0"));
    }
}
