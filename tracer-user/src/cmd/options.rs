//! Durations as every command's flags take them, parsed and bounded once.
use std::time::Duration;

/// Longest duration any flag accepts: beyond it, deadlines stop being meaningful (and
/// `Instant + Duration` could overflow).
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses `30s`, `2m`, `500ms`, `1h` (or plain seconds). Zero and negative values are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be greater than zero, like 30s"));
    }
    Ok(d)
}

/// As [`parse_duration`], zero allowed (meaning "off").
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use a positive number with a unit, like 500ms, 30s, 2m");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("invalid duration {s:?}: at most one year (366d)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Largest memory budget any size flag accepts.
pub const MAX_BYTES: u64 = 1 << 30;

/// Parses a size: bytes, or with a unit `KiB`, `MiB`, `GiB` (1024-based). At most 1 GiB.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: use bytes or a unit, like 16MiB or 512KiB");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    match n.checked_mul(scale) {
        Some(b) if b <= MAX_BYTES => Ok(b),
        _ => Err(format!("invalid size {s:?}: at most 1GiB")),
    }
}

/// `now + d` for a timer, with checked arithmetic: durations are bounded by [`MAX_DURATION`],
/// and a deadline that cannot be represented is clamped rather than panicking.
pub fn deadline_after(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d).or_else(|| now.checked_add(MAX_DURATION)).unwrap_or(now)
}

/// Parses a command line as clap does, except that a usage error is one line on stderr with
/// exit status 2; help and version are printed as clap prints them (status 0). `Err` holds the
/// status to exit with.
pub fn parse_cli<T: clap::Parser>(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<T, std::process::ExitCode> {
    match T::try_parse_from(args) {
        Ok(c) => Ok(c),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            Err(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            let text = e.render().to_string();
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
                })
                .collect();
            eprintln!("{}", lines.join(" "));
            Err(std::process::ExitCode::from(2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1").unwrap_err().contains("invalid duration \"-1\""));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10parsecs").is_err());
        assert_eq!(parse_duration_or_zero("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("99999999999999999999s").unwrap_err().contains("at most one year"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("2GiB").unwrap_err().contains("at most 1GiB"));
        assert!(parse_bytes("18446744073709551615GiB").is_err());
        assert!(parse_bytes("16MB").is_err());
    }
}
