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
    // No short circuit, so the scan vectorises.
    if s.bytes().fold(false, |c, b| c | (b < 0x20)) {
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

/// What an encoder writes into: the JSON text and, when asked for, the same text as a JSON
/// string literal (what embedding the text as a string value in other JSON takes, e.g. an
/// annotation in a JSONPatch), written in the same pass so the second escaping costs a copy:
/// literals come with both forms, and a string that needs no escaping is the same in both.
pub struct Out {
    /// The JSON text.
    pub json: String,
    /// The JSON text as a string literal, quotes included (when asked for).
    pub literal: Option<String>,
}

impl Out {
    /// An empty output; `literal`: also write the string-literal form.
    pub fn new(capacity: usize, literal: bool) -> Self {
        Out {
            json: String::with_capacity(capacity),
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
        self.json.push_str(raw);
        if let Some(l) = &mut self.literal {
            l.push_str(escaped);
        }
    }

    /// Appends `s` as a JSON string.
    pub fn string(&mut self, s: &str) {
        let plain = !s
            .bytes()
            .fold(false, |c, b| c | (b < 0x20) | (b == b'"') | (b == b'\\'));
        let start = self.json.len();
        if plain {
            self.json.push('"');
            self.json.push_str(s);
            self.json.push('"');
        } else {
            push_string(&mut self.json, s);
        }
        if let Some(l) = &mut self.literal {
            if plain {
                l.push_str("\\\"");
                l.push_str(s);
                l.push_str("\\\"");
            } else {
                push_escaped(l, &self.json[start..]);
            }
        }
    }

    /// Appends the decimal integer `n`.
    pub fn int(&mut self, n: impl itoa::Integer + Copy) {
        push_int(&mut self.json, n);
        if let Some(l) = &mut self.literal {
            push_int(l, n);
        }
    }

    /// The JSON text, and its string literal when asked for.
    pub fn finish(self) -> (String, Option<String>) {
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
        ] {
            let mut out = String::new();
            push_string(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
        let mut n = String::new();
        push_int(&mut n, -42i64);
        push_int(&mut n, 7u32);
        assert_eq!(n, "-427");
    }
}
