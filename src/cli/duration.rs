//! The one parser of every duration flag (`--stop-timeout`, `--wait`, `--grace-period`, ...):
//! plain seconds (`10`) or humantime (`1500ms`, `90s`, `30m`, `24h`, `7d`).

use std::time::Duration;

/// Parses `text` as plain seconds or a humantime duration.
pub fn parse(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text)
            .map_err(|err| format!("invalid duration {text:?}: {err} (e.g. 10, 1500ms, 30m, 24h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_seconds_and_units() {
        assert_eq!(parse("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn garbage_is_refused_with_the_input_named() {
        for bad in ["", "x", "10 parsecs", "-5s"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
