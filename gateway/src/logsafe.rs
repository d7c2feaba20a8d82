//! Text that a car or a partner controls, made safe to put in a log line or an error message.
//!
//! A topic, a client id or a request id is attacker-chosen: a newline would forge a log line,
//! an ANSI escape would recolour a terminal, and a bidi control (U+202E) or another invisible
//! format character would make a reader see something other than what is there. Every such
//! character is escaped the way Rust's `Debug` does it (`\n`, `\u{202e}`), and the text is cut
//! to a bounded length so a car cannot make the gateway write megabytes of log.

/// Longest stretch of a car's or a partner's text quoted in a log line, in characters.
pub const MAX_QUOTED_CHARS: usize = 128;

/// `s` cut to [`MAX_QUOTED_CHARS`] characters (marked with `…` if cut), with every control,
/// format (bidi included) and separator character escaped.
pub fn printable(s: &str) -> String {
    printable_within(s, MAX_QUOTED_CHARS)
}

/// [`printable`] with another length limit.
pub fn printable_within(s: &str, max_chars: usize) -> String {
    let mut out: String = s.chars().take(max_chars).flat_map(char::escape_debug).collect();
    if s.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

/// `s` with the same characters escaped as [`printable`], but whole and with its quotes as they
/// are: for text shown to a person in a table or a terminal line, not quoted in a log line.
pub fn printable_whole(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\'' | '\\' => out.push(c),
            c => out.extend(c.escape_debug()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_that_mislead_a_reader_are_escaped() {
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
        // Right-to-left override, zero-width space, line separator: Cf and Zl characters.
        assert_eq!(printable("pay\u{202e}gnp.exe"), "pay\\u{202e}gnp.exe");
        assert_eq!(printable("a\u{200b}b\u{2028}c"), "a\\u{200b}b\\u{2028}c");
        assert_eq!(printable("nul\0"), "nul\\0");
        assert_eq!(
            printable("/tenants/LSVAU2180N2183294/v1/req"),
            "/tenants/LSVAU2180N2183294/v1/req"
        );
        assert_eq!(printable("停车场"), "停车场");
    }

    #[test]
    fn whole_text_keeps_its_quotes_and_length() {
        let long = "x".repeat(1000);
        assert_eq!(printable_whole(&long), long);
        assert_eq!(printable_whole("O'Brien \"VIP\" C:\\"), "O'Brien \"VIP\" C:\\");
        assert_eq!(printable_whole("pay\u{202e}gnp\n"), "pay\\u{202e}gnp\\n");
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        assert_eq!(printable_within("abcdef", 3), "abc…");
        assert_eq!(printable_within("abc", 3), "abc");
        assert_eq!(printable(&"x".repeat(10_000)).chars().count(), MAX_QUOTED_CHARS + 1);
    }
}
