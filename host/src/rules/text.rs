//! Text a rule hands the host, made safe to show: every guest-supplied
//! string that reaches a log line, a terminal, an invoice, an event or a
//! fraud review goes through here first.
//!
//! Two dangers, two measures:
//!
//! - control characters (newlines, `ESC [` terminal sequences, carriage
//!   returns, bidirectional overrides) would let a rule forge log lines or
//!   repaint an operator's terminal: they are *escaped*, visibly and
//!   reversibly (`\n`, `\u{1b}`), never silently dropped;
//! - unbounded text would let a rule bloat every invoice and event it
//!   touches: rule text is *truncated* to [`MAX_RULE_TEXT_CHARS`] characters,
//!   on a character boundary, ending with `…` when something was cut.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Longest rule text (a description, a reason, a flag, a refusal message)
/// kept on an invoice, an event or a fraud review, in characters after
/// escaping, the closing `…` included.
pub const MAX_RULE_TEXT_CHARS: usize = 200;

/// Longest failure text of a rule (its error message, its panic output)
/// kept for logs and the operators' error list, in characters after escaping.
pub const MAX_FAILURE_TEXT_CHARS: usize = 1024;

/// The mark closing truncated text.
const ELLIPSIS: char = '…';

/// Whether `c` must not reach a log or a terminal as is: C0 and C1 controls
/// and DEL (`char::is_control`), the Unicode line and paragraph separators
/// (some viewers break lines there), and the bidirectional marks, embeddings,
/// overrides and isolates (they reorder what a reader sees).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether `s` holds any character [`is_unsafe_char`] refuses.
pub fn has_unsafe_chars(s: &str) -> bool {
    s.chars().any(is_unsafe_char)
}

/// Appends `c` to `out`, escaped if it is unsafe: `\n`, `\r`, `\t` by
/// name, anything else as `\u{…}` (Rust's notation).
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if is_unsafe_char(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Length in bytes of `c` once escaped (what [`push_escaped`] appends).
fn escaped_char_len(c: char) -> usize {
    match c {
        '\n' | '\r' | '\t' => 2,
        // `\u{` + hex digits + `}`.
        c if is_unsafe_char(c) => 4 + (32 - (c as u32 | 1).leading_zeros()).div_ceil(4) as usize,
        c => c.len_utf8(),
    }
}

/// Length in bytes of `s` once escaped, without building it: what a log
/// budget charges before anything is formatted.
pub fn escaped_len(s: &str) -> usize {
    if !has_unsafe_chars(s) {
        return s.len();
    }
    s.chars().map(escaped_char_len).sum()
}

/// `s` with its unsafe characters escaped; borrowed when there were none.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !has_unsafe_chars(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// `s` escaped and cut to at most `max_bytes` bytes on a character boundary
/// (an escape is never split), ending with `…` if anything was cut; the
/// ellipsis counts towards the limit.
pub fn escape_bytes(s: &str, max_bytes: usize) -> String {
    if escaped_len(s) <= max_bytes {
        return escape(s).into_owned();
    }
    cut(s, max_bytes, str::len, ELLIPSIS.len_utf8())
}

/// `s` escaped and cut to at most `max_chars` characters, an escape never
/// split, ending with `…` if anything was cut (the ellipsis counts).
pub fn clean(s: &str, max_chars: usize) -> String {
    // An escape is ASCII: its length in bytes is its length in characters.
    let chars: usize = s.chars().map(|c| if is_unsafe_char(c) { escaped_char_len(c) } else { 1 }).sum();
    if chars <= max_chars {
        return escape(s).into_owned();
    }
    cut(s, max_chars, |piece| piece.chars().count(), 1)
}

/// The longest escaped prefix of `s` whose `measure` leaves room for the
/// ellipsis within `limit`, then the ellipsis (if it fits at all).
fn cut(s: &str, limit: usize, measure: fn(&str) -> usize, ellipsis: usize) -> String {
    let Some(room) = limit.checked_sub(ellipsis) else {
        return String::new();
    };
    let mut out = String::new();
    let mut used = 0;
    let mut piece = String::new();
    for c in s.chars() {
        piece.clear();
        push_escaped(&mut piece, c);
        let size = measure(&piece);
        if used + size > room {
            break;
        }
        out.push_str(&piece);
        used += size;
    }
    out.push(ELLIPSIS);
    out
}

/// Rule text for invoices, events and fraud reviews: [`clean`] at
/// [`MAX_RULE_TEXT_CHARS`].
pub fn rule_text(s: &str) -> String {
    clean(s, MAX_RULE_TEXT_CHARS)
}

/// A rule's failure text for logs: [`clean`] at [`MAX_FAILURE_TEXT_CHARS`].
pub fn failure_text(s: &str) -> String {
    clean(s, MAX_FAILURE_TEXT_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_passes_unchanged_and_borrowed() {
        assert!(matches!(escape("GOLD tier 10% — déjà vu"), Cow::Borrowed(_)));
        assert_eq!(rule_text("GOLD tier 10%"), "GOLD tier 10%");
        assert_eq!(escaped_len("déjà"), "déjà".len());
    }

    #[test]
    fn control_characters_are_escaped_visibly() {
        let forged = "ok\nINFO fake line\r\x1b[2J\x07\u{202e}evil\u{85}";
        let escaped = escape(forged);
        assert_eq!(escaped, "ok\\nINFO fake line\\r\\u{1b}[2J\\u{7}\\u{202e}evil\\u{85}");
        assert!(!has_unsafe_chars(&escaped));
        assert_eq!(escaped_len(forged), escaped.len());
        for c in ['\0', '\u{7f}', '\u{9b}', '\u{2028}', '\u{10ffff}', 'a', 'é', '\u{2066}'] {
            let s = c.to_string();
            assert_eq!(escaped_len(&s), escape(&s).len(), "{c:?}");
        }
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_with_an_ellipsis() {
        let long = "é".repeat(60_000);
        let cut = rule_text(&long);
        assert_eq!(cut.chars().count(), MAX_RULE_TEXT_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(cut.trim_end_matches('…'), "é".repeat(MAX_RULE_TEXT_CHARS - 1));
        // Exactly at the limit: nothing cut, no ellipsis.
        let exact = "x".repeat(MAX_RULE_TEXT_CHARS);
        assert_eq!(rule_text(&exact), exact);
        // An escape is never split.
        let escapes = "\x1b".repeat(100);
        let cut = clean(&escapes, 20);
        assert_eq!(cut, "\\u{1b}\\u{1b}\\u{1b}…");
    }

    #[test]
    fn escape_bytes_respects_its_byte_limit() {
        let cut = escape_bytes(&"é".repeat(100), 11);
        assert!(cut.len() <= 11, "{cut:?}");
        assert_eq!(cut, "éééé…");
        assert_eq!(escape_bytes("short", 11), "short");
        assert_eq!(escape_bytes("a\nb", 4), "a\\nb");
        assert_eq!(escape_bytes("a\nbc", 4), "a…");
        assert_eq!(escape_bytes("abc", 0), "");
    }
}
