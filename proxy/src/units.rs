//! Parsing of the duration and mark flags (`2s`, `500ms`, `1h`; `0x7470`).

use std::time::Duration;

/// `500ms`, `2s`, `5m`, `1h`, or a bare number of seconds. `0` is allowed (callers decide
/// whether it means "never").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("{s:?}: expected a duration like 500ms, 2s, 5m or 1h"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// A 32-bit mark, decimal or `0x` hex; zero is refused (it would match unmarked packets).
pub fn parse_mark(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("{s:?}: expected a number like 0x7470"))?;
    if v == 0 { Err("the mark must not be 0".into()) } else { Ok(v) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn marks() {
        assert_eq!(parse_mark("0x7470"), Ok(0x7470));
        assert_eq!(parse_mark("29808"), Ok(29808));
        assert!(parse_mark("0").is_err());
        assert!(parse_mark("zz").is_err());
    }
}
