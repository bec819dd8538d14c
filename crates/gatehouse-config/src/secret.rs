//! A string that never shows itself in `Debug`, `Display` or logs.

use std::fmt;

/// A provider key or other credential. Read it only with [`Secret::expose`], at the one place it
/// goes on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("sk-live-123".into());
        assert!(!format!("{s:?} {s}").contains("sk-live"));
        assert_eq!(s.expose(), "sk-live-123");
    }
}
