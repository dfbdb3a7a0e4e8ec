//! JSON written by hand on the webhook's hot path (the decision record, the JSONPatch): string
//! literals with exactly serde_json's escaping, so the bytes equal what serde_json writes for
//! the same value, and integers without the formatting machinery. Encoders built on these
//! write their keys and punctuation as literals.

/// Appends `s` as a JSON string literal (quotes included), escaped as serde_json escapes it.
pub fn push_string(out: &mut String, s: &str) {
    out.push('"');
    push_escaped(out, s);
    out.push('"');
}

/// Appends what goes between the quotes of `s`'s JSON string literal: `"` and `\` after a
/// backslash, control characters as serde_json writes them (`\n`, `\u001f`, …), everything else
/// (non-ASCII included) verbatim — serde_json's escaping byte for byte.
pub fn push_escaped(out: &mut String, s: &str) {
    if plain(s) {
        out.push_str(s);
        return;
    }
    if s.bytes().any(|b| b < 0x20) {
        // Rare: serde_json writes its own control-character escapes.
        let lit = serde_json::to_string(s).expect("a str serialises");
        out.push_str(&lit[1..lit.len() - 1]);
        return;
    }
    let mut rest = s;
    while let Some(i) = memchr::memchr2(b'"', b'\\', rest.as_bytes()) {
        out.push_str(&rest[..i]);
        out.push('\\');
        out.push_str(&rest[i..=i]);
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// True when `s` needs no escaping (no `"`, `\\` or control character): its JSON string literal
/// is `s` in quotes.
pub fn plain(s: &str) -> bool {
    special_at(s.as_bytes()).is_none()
}

/// The offset of the first `"`, `\\` or control byte of `bytes`: where a JSON string's contents
/// stop being read verbatim. Eight bytes at a time: `(x - 0x01..) & !x & 0x80..` flags the bytes
/// of `x` that are zero (for `< 0x20`, the same test against `0x20..`); bytes above a flagged one
/// may be flagged wrongly, the lowest flag never is.
#[inline]
pub fn special_at(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    let mut i = 0;
    while let Some(word) = bytes.get(i..i + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let quote = x ^ (ONES * b'"' as u64);
        let backslash = x ^ (ONES * b'\\' as u64);
        let flags = ((x.wrapping_sub(ONES * 0x20) & !x)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash))
            & HIGH;
        if flags != 0 {
            return Some(i + flags.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    let at = bytes[i..]
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')?;
    Some(i + at)
}

/// Appends the decimal integer `n`.
pub fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `s` as a JSON string literal (quotes included).
pub fn string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_string(&mut out, s);
    out
}

/// What an encoder writes into: the JSON text, its JSON string literal (what embedding the text
/// as a string value in other JSON takes, e.g. an annotation in a JSONPatch), or both in the same
/// pass — so the second escaping costs a copy: literals come with both forms, and a string that
/// needs no escaping is the same in both.
pub struct Out {
    json: Option<String>,
    literal: Option<String>,
}

/// Which forms an [`Out`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forms {
    /// The JSON text.
    Json,
    /// Its string literal.
    Literal,
    /// Both.
    Both,
}

impl Out {
    /// An empty output writing `forms`.
    pub fn new(capacity: usize, forms: Forms) -> Self {
        let json = forms != Forms::Literal;
        let literal = forms != Forms::Json;
        Out {
            json: json.then(|| String::with_capacity(capacity)),
            literal: literal.then(|| {
                let mut l = String::with_capacity(capacity + capacity / 4);
                l.push('"');
                l
            }),
        }
    }

    /// Appends literal JSON `raw`, whose escaped form (as string-literal contents) is `escaped`.
    pub fn lit(&mut self, raw: &str, escaped: &str) {
        debug_assert_eq!(escaped, {
            let mut e = String::new();
            push_escaped(&mut e, raw);
            e
        });
        if let Some(j) = &mut self.json {
            j.push_str(raw);
        }
        if let Some(l) = &mut self.literal {
            l.push_str(escaped);
        }
    }

    /// Appends `s` as a JSON string.
    pub fn string(&mut self, s: &str) {
        if plain(s) {
            if let Some(j) = &mut self.json {
                j.reserve(s.len() + 2);
                j.push('"');
                j.push_str(s);
                j.push('"');
            }
            if let Some(l) = &mut self.literal {
                l.reserve(s.len() + 4);
                l.push_str("\\\"");
                l.push_str(s);
                l.push_str("\\\"");
            }
            return;
        }
        let lit = string_literal(s);
        if let Some(l) = &mut self.literal {
            push_escaped(l, &lit);
        }
        if let Some(j) = &mut self.json {
            j.push_str(&lit);
        }
    }

    /// Appends the JSON array of `items`, each written by `each`.
    pub fn list<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
        self.lit("[", "[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.lit(",", ",");
            }
            each(self, item);
        }
        self.lit("]", "]");
    }

    /// Appends the decimal integer `n`.
    pub fn int(&mut self, n: impl itoa::Integer + Copy) {
        let mut b = itoa::Buffer::new();
        let digits = b.format(n);
        if let Some(j) = &mut self.json {
            j.push_str(digits);
        }
        if let Some(l) = &mut self.literal {
            l.push_str(digits);
        }
    }

    /// The JSON text and its string literal, each when asked for.
    pub fn finish(self) -> (Option<String>, Option<String>) {
        let literal = self.literal.map(|mut l| {
            l.push('"');
            l
        });
        (self.json, literal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        for s in [
            "",
            "plain",
            "a\"b\\c",
            "\"\"\\\\",
            "tab\tnew\nline\u{1}\u{1f}\u{7f}",
            "é✓🚀 \u{2028}</script>",
            "{\"k\":\"v\\n\"}",
            "eight by",
            "sixteen bytes ok",
            "0123456789abcde\"",
            "0123456789abcdef\\",
            "0123456\u{1f}89abcdef",
            "\u{7f}\u{80}\u{ff}ÿ\u{9f}\u{a0}  !#[]]^~",
        ] {
            let mut out = String::new();
            push_string(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
            assert_eq!(plain(s), out.len() == s.len() + 2, "{s:?}");
        }
        // Every ASCII byte at every position of a word-and-a-half string, and after a non-ASCII
        // character (whose UTF-8 bytes are >= 0x80).
        for b in 0u8..0x80 {
            for at in 0..12 {
                for prefix in ["", "ÿ"] {
                    let mut s = format!("{prefix}{}", "a".repeat(12));
                    s.replace_range(
                        prefix.len() + at..prefix.len() + at + 1,
                        &(b as char).to_string(),
                    );
                    let naive = s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\');
                    assert_eq!(plain(&s), naive, "{s:?}");
                }
            }
        }
        // The first special byte among several, wherever they fall in the words.
        let special = |c: &u8| *c < 0x20 || *c == b'"' || *c == b'\\';
        for (first, second) in [(b'"', b'\\'), (b'\\', 0u8), (0x1f, b'"'), (b'"', b'"')] {
            for at in 0..20 {
                for then in at + 1..21 {
                    let mut s = "ÿ".repeat(11).into_bytes();
                    s[at] = first;
                    s[then] = second;
                    assert_eq!(special_at(&s), s.iter().position(special), "{s:?}");
                }
            }
        }
        assert_eq!(special_at("ÿ".repeat(11).as_bytes()), None);
        let mut n = String::new();
        push_int(&mut n, -42i64);
        push_int(&mut n, 7u32);
        assert_eq!(n, "-427");
    }
}
