//! Durations (`"30s"`, `"5m"`, `"5d"`) and sizes (`"35MB"`, `"512KiB"`) as written in the
//! config file. Both are strings, so a bare number with no unit is rejected rather than
//! guessed at.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with a unit: `ms`, `s`, `m`, `h`, `d` or `w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

/// A size in bytes written with a unit: `B`, `KB`/`MB`/`GB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ConfigDuration {
    /// Builds a duration of whole seconds.
    pub const fn secs(secs: u64) -> Self {
        ConfigDuration(Duration::from_secs(secs))
    }
}

impl FromStr for ConfigDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (number, unit) = split_number(text)?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (ms, s, m, h, d, w)"
                ));
            }
            _ => return Err(format!("invalid duration {text:?}: unknown unit {unit:?}")),
        };
        number
            .checked_mul(millis_per_unit)
            .map(|millis| ConfigDuration(Duration::from_millis(millis)))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        for (unit, size) in [("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000)] {
            if millis > 0 && millis.is_multiple_of(size) {
                return write!(f, "{}{unit}", millis / size);
            }
        }
        if millis > 0 && millis.is_multiple_of(60_000) {
            write!(f, "{}m", millis / 60_000)
        } else if millis.is_multiple_of(1_000) {
            write!(f, "{}s", millis / 1_000)
        } else {
            write!(f, "{millis}ms")
        }
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (number, unit) = split_number(text)?;
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "" => {
                return Err(format!(
                    "invalid size {text:?}: missing unit (B, KB, MB, GB, KiB, MiB, GiB)"
                ));
            }
            _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?}")),
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {text:?}: too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in [("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000)] {
            if self.0 > 0 && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Splits `"35MB"` into `(35, "MB")`, allowing one space between the two.
fn split_number(text: &str) -> Result<(u64, &str), String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    if digits_end == 0 {
        return Err(format!(
            "invalid value {text:?}: expected a number followed by a unit"
        ));
    }
    let number = trimmed[..digits_end]
        .parse::<u64>()
        .map_err(|_| format!("invalid value {text:?}: number too large"))?;
    Ok((number, trimmed[digits_end..].trim_start()))
}

macro_rules! string_serde {
    ($type:ty) => {
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    };
}

string_serde!(ConfigDuration);
string_serde!(ByteSize);

/// Reads a list of `ip:port` strings, naming the value that does not parse.
pub(super) fn socket_addresses<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<std::net::SocketAddr>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| {
            text.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid listen address {text:?}: expected ip:port, such as 127.0.0.1:2525 or [::1]:2525"
                ))
            })
        })
        .collect()
}

/// Reads a list of networks, `ip/prefix` or a single `ip` (a /32 or /128), naming the value
/// that does not parse.
pub(super) fn networks<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "invalid network {text:?}: expected ip/prefix, such as 10.0.0.0/8, or an ip"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_every_unit() {
        let cases = [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("5d", 432_000_000),
            ("1w", 604_800_000),
            (" 10 s ", 10_000),
        ];
        for (text, millis) in cases {
            let parsed: ConfigDuration = text.parse().unwrap();
            assert_eq!(parsed.0.as_millis(), millis, "{text}");
        }
    }

    #[test]
    fn durations_reject_bad_text() {
        for text in ["", "5", "5x", "m", "-5m", "99999999999999999999s"] {
            let error = text.parse::<ConfigDuration>().unwrap_err();
            assert!(error.contains(&format!("{text:?}")), "{text}: {error}");
        }
    }

    #[test]
    fn sizes_parse_decimal_and_binary_units() {
        let cases = [
            ("35MB", 35_000_000),
            ("512KiB", 524_288),
            ("1GiB", 1_073_741_824),
            ("100B", 100),
            ("10mb", 10_000_000),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>().unwrap().0, bytes, "{text}");
        }
    }

    #[test]
    fn sizes_reject_missing_unit() {
        assert!(
            "35".parse::<ByteSize>()
                .unwrap_err()
                .contains("missing unit")
        );
        assert!(
            "35 parsecs"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn display_round_trips() {
        for text in ["5m", "30s", "5d", "250ms", "2h"] {
            let parsed: ConfigDuration = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        for text in ["35MB", "100B", "1KB"] {
            let parsed: ByteSize = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
    }
}
