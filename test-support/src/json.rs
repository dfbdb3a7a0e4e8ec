//! Deep merge of JSON values, the way the fixtures layer a test's specifics over a base object.

use serde_json::Value;

/// Merges `b` into `a`: objects key by key (recursively), anything else replaced by `b`.
pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_objects_deeply_and_replaces_everything_else() {
        let mut a = json!({"m": {"a": 1, "b": [1, 2]}, "k": "x"});
        merge(&mut a, json!({"m": {"b": [3], "c": null}, "n": 2}));
        assert_eq!(
            a,
            json!({"m": {"a": 1, "b": [3], "c": null}, "k": "x", "n": 2})
        );
    }
}
