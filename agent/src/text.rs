//! Text from outside (a broker's error detail, a LUKS token's URL, a config value) made safe to
//! print: control characters escaped, so a hostile byte cannot move the console's cursor, clear
//! the screen or forge a log line, and long values cut, so a megabyte value is not echoed.

use std::fmt::Write;

/// The longest untrusted value printed as is, in characters.
pub(crate) const MAX_VALUE: usize = 200;

/// `s` with every control character (C0, DEL, C1) escaped as `\xNN` / `\u{NNNN}`, double quotes
/// as `'` (the verdict line quotes its reason), cut to `max` characters with a note saying how
/// long the value was.
pub(crate) fn printable(s: &str, max: usize) -> String {
    escape(s, max, true)
}

/// A whole log line for the console: control characters escaped, quotes kept, cut to `max`.
pub fn console(s: &str, max: usize) -> String {
    escape(s, max, false)
}

fn escape(s: &str, max: usize, quotes: bool) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 16);
    for (shown, c) in s.chars().enumerate() {
        if shown >= max {
            let _ = write!(out, "... ({} bytes in all)", s.len());
            return out;
        }
        match c {
            '"' if quotes => out.push('\''),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if ('\u{80}'..='\u{9f}').contains(&c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// A value from outside, for a message: `printable` with `MAX_VALUE`.
pub fn value(s: &str) -> String {
    printable(s, MAX_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_quotes_and_cuts() {
        assert_eq!(printable("a\x1b[2Jb\"c\r\n", 100), "a\\x1b[2Jb'c\\x0d\\x0a");
        assert_eq!(printable("\u{9b}31m", 100), "\\u{009b}31m");
        let long = "x".repeat(1000);
        let p = printable(&long, 10);
        assert_eq!(p, "xxxxxxxxxx... (1000 bytes in all)");
        assert_eq!(printable("héllo", 100), "héllo");
    }
}
