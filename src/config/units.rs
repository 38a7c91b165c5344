//! Sizes and durations as people write them: `104857600`, `"100MiB"`, `"100MB"`; `"15s"`,
//! `"2h"`, `"1h 30m"`, or a number of seconds.
//!
//! Owns: parsing and printing of those two units. Does not own: which ranges a key accepts
//! (`validate`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A byte count written as `104857600`, `"100MiB"` or `"100MB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(text: &str) -> Result<Size, String> {
        let t = text.trim();
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Size(n));
        }
        t.parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|_| format!("expected a size such as 104857600, \"100MiB\" or \"100MB\", got {text:?}"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", human_bytes(self.0))
    }
}

/// Bytes for people: `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, "size", Size, Size::parse)
    }
}

/// A whole number (`from_int`) or a human form (`parse`), with negatives refused by name.
fn number_or_text<'de, D: Deserializer<'de>, T>(
    d: D,
    what: &str,
    from_int: impl Fn(u64) -> T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) if n >= 0 => Ok(from_int(n as u64)),
        Raw::Int(n) => Err(serde::de::Error::custom(format!("a {what} cannot be negative, got {n}"))),
        Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
    }
}

/// A duration written as `"15s"`, `"2h"`, `"1h 30m"`, or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(text: &str) -> Result<Dur, String> {
        let t = text.trim();
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Dur(Duration::from_secs(n)));
        }
        humantime::parse_duration(t)
            .map(Dur)
            .map_err(|e| format!("expected a duration such as \"15s\" or \"2h\", got {text:?} ({e})"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, "duration", |n| Dur(Duration::from_secs(n)), Dur::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_in_human_forms() {
        assert_eq!(Size::parse("104857600").unwrap(), Size(104_857_600));
        assert_eq!(Size::parse("100MiB").unwrap(), Size(104_857_600));
        assert_eq!(Size::parse("100MB").unwrap(), Size(100_000_000));
        assert!(Size::parse("lots").is_err());
        assert_eq!(Dur::parse("15s").unwrap().0, Duration::from_secs(15));
        assert_eq!(Dur::parse("2h").unwrap().0, Duration::from_secs(7200));
    }
}
