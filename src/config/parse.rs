//! The value parsers every command's settings share. Each error names the setting.

use std::time::Duration;

use super::{ConfigError, FileConfig};
use crate::cli::ConnectArgs;
use crate::duration;

/// A [`ConfigError`] for `field`.
pub(crate) fn bad(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(field, problem)
}

/// The `--config` file the flags name, or an empty one.
pub(crate) fn load_file(args: &ConnectArgs) -> Result<FileConfig, ConfigError> {
    match &args.config {
        Some(path) => FileConfig::load(path),
        None => Ok(FileConfig::default()),
    }
}

/// A whole number.
pub(crate) fn parse_num<T: std::str::FromStr>(field: &str, s: &str) -> Result<T, ConfigError> {
    s.trim()
        .parse()
        .map_err(|_| bad(field, format!("{s:?} is not a whole number")))
}

/// A whole number, zero or more.
pub(crate) fn non_negative<T: std::str::FromStr + PartialOrd + Default>(
    field: &str,
    s: &str,
) -> Result<T, ConfigError> {
    let n = parse_num::<T>(field, s)?;
    if n < T::default() {
        return Err(bad(field, "must not be negative"));
    }
    Ok(n)
}

/// `--limit`: at least 1 when given.
pub(crate) fn parse_limit(s: Option<&str>) -> Result<Option<u64>, ConfigError> {
    match s {
        None => Ok(None),
        Some(s) => match parse_num::<u64>("--limit", s)? {
            0 => Err(bad("--limit", "must be at least 1")),
            n => Ok(Some(n)),
        },
    }
}

/// A duration longer than zero; `default` when not given.
pub(crate) fn positive_duration(
    field: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let d = duration::parse(value).map_err(|e| bad(field, e.to_string()))?;
    if d.is_zero() {
        return Err(bad(field, "must be longer than zero"));
    }
    Ok(d)
}

/// A size in bytes: `1048576`, `512KiB`, `32MiB`, `1GiB` (powers of 1024), `500KB`, `2MB`,
/// `1GB` (powers of 1000), `B` for bytes.
pub fn parse_size(field: &str, s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit_scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(bad(
                field,
                format!("{s:?} is not a size such as 32MiB, 512KiB or 1048576 (bytes)"),
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_scale))
        .ok_or_else(|| {
            bad(
                field,
                format!("{s:?} is not a size such as 32MiB, 512KiB or 1048576 (bytes)"),
            )
        })
}
