//! Frame sizes as surv's command lines write them: `WIDTHxHEIGHT`, e.g. `640x480`.
//!
//! Only the spelling is checked here; which sizes a source or a viewer accepts is theirs to say.

use thiserror::Error;

/// Why a `--size` value is not `WIDTHxHEIGHT`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    #[error("expected WIDTHxHEIGHT, e.g. 640x480")]
    NoX,
    #[error("bad width {0:?}")]
    Width(String),
    #[error("bad height {0:?}")]
    Height(String),
}

/// Parses `WIDTHxHEIGHT` (`x` or `X`, spaces around the numbers tolerated) into pixels.
pub fn parse_size(s: &str) -> Result<(u32, u32), SizeError> {
    let (w, h) = s.split_once(['x', 'X']).ok_or(SizeError::NoX)?;
    let width = w.trim().parse().map_err(|_| SizeError::Width(w.into()))?;
    let height = h.trim().parse().map_err(|_| SizeError::Height(h.into()))?;
    Ok((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_users_write_them() {
        assert_eq!(parse_size("640x480"), Ok((640, 480)));
        assert_eq!(parse_size("160X90"), Ok((160, 90)));
        assert_eq!(parse_size(" 1280 x 720 "), Ok((1280, 720)));
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        assert_eq!(parse_size("640"), Err(SizeError::NoX));
        assert_eq!(parse_size(""), Err(SizeError::NoX));
        assert_eq!(parse_size("ax480"), Err(SizeError::Width("a".into())));
        assert_eq!(parse_size("640x"), Err(SizeError::Height("".into())));
        assert_eq!(parse_size("160x90x"), Err(SizeError::Height("90x".into())));
        assert_eq!(parse_size("-1x5"), Err(SizeError::Width("-1".into())));
        assert_eq!(
            parse_size("99999999999x1"),
            Err(SizeError::Width("99999999999".into()))
        );
        assert_eq!(
            SizeError::NoX.to_string(),
            "expected WIDTHxHEIGHT, e.g. 640x480"
        );
        assert_eq!(
            SizeError::Height("90x".into()).to_string(),
            "bad height \"90x\""
        );
    }
}
