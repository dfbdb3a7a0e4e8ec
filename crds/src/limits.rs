//! Size limits of what the operator writes to the API (condition messages, event notes) and the
//! one truncation both use.

/// Longest condition message the API accepts (`metav1.Condition.message`, 32 KiB).
pub const CONDITION_MESSAGE_MAX: usize = 32 * 1024;
/// Longest event note kubetune publishes (`events.k8s.io/v1` notes are limited to 1 kB).
pub const EVENT_NOTE_MAX: usize = 1000;

/// `s` cut to at most `max` bytes on a character boundary; when cut, `marker` (which counts
/// towards `max`) is appended.
pub fn truncate(mut s: String, max: usize, marker: &str) -> String {
    if s.len() > max {
        let mut cut = max.saturating_sub(marker.len());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(marker);
    }
    s
}

/// A condition message within [`CONDITION_MESSAGE_MAX`] (cut without a marker).
pub fn condition_message(s: String) -> String {
    truncate(s, CONDITION_MESSAGE_MAX, "")
}

/// An event note within [`EVENT_NOTE_MAX`] (cut notes end in `...`).
pub fn event_note(s: String) -> String {
    truncate(s, EVENT_NOTE_MAX, "...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_table() {
        let cases: &[(&str, usize, &str, &str)] = &[
            ("short", 10, "...", "short"),
            ("exactly10!", 10, "...", "exactly10!"),
            ("eleven char", 10, "...", "eleven ..."),
            ("eleven char", 10, "", "eleven cha"),
            // 'é' is two bytes: never cut inside it.
            ("aaaaaaaéé", 8, "", "aaaaaaa"),
            ("aaaaaaéé", 9, "...", "aaaaaa..."),
            ("", 0, "...", ""),
        ];
        for (s, max, marker, want) in cases {
            let got = truncate(s.to_string(), *max, marker);
            assert_eq!(got, *want, "{s:?} max {max} marker {marker:?}");
            assert!(got.len() <= *max || got == *s, "{got:?}");
        }
    }

    #[test]
    fn notes_and_messages_fit() {
        let long = "x".repeat(40_000);
        let note = event_note(long.clone());
        assert_eq!(note.len(), EVENT_NOTE_MAX);
        assert!(note.ends_with("..."));
        assert_eq!(&note[..997], &long[..997]);
        assert_eq!(condition_message(long).len(), CONDITION_MESSAGE_MAX);
        assert_eq!(event_note("ok".into()), "ok");
    }
}
