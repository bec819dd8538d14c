//! Small helpers for `serde_json::Value`s that may come from outside.
//!
//! `value["key"] = x` panics when `value` is not an object (an array, a string, null from a
//! provider that answered something odd); [`set`] never does.

use serde_json::Value;

/// Sets `key` on `v` when `v` is an object; does nothing otherwise.
pub fn set(v: &mut Value, key: &str, val: impl Into<Value>) {
    if let Some(o) = v.as_object_mut() {
        o.insert(key.to_owned(), val.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sets_on_objects_and_leaves_anything_else_alone() {
        let mut v = json!({"a": 1});
        set(&mut v, "b", 2);
        assert_eq!(v, json!({"a": 1, "b": 2}));
        for mut other in [json!([1]), json!("s"), Value::Null, json!(3)] {
            let before = other.clone();
            set(&mut other, "b", 2);
            assert_eq!(other, before);
        }
    }
}
