//! What a request asks for, read from its query string and headers. Pure functions of
//! outside text, so the fuzz targets call them directly.

use crate::predictions::{DEFAULT_TOP, MAX_TOP};
use crate::preprocess::ResizeMode;

/// Per-request choices from the query string.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub model: Option<String>,
    pub top: usize,
    pub resize: Option<ResizeMode>,
}

/// Longest model name we look up; a longer one cannot be in any manifest we ship and
/// would only be echoed back in the error.
const MAX_MODEL_NAME: usize = 128;

/// Parses `top`, `model` and `resize`; other parameters belong to gateways and tools.
/// The error is the detail of a 400 answer.
pub fn parse_query(query: &str) -> Result<Query, String> {
    let mut parsed = Query {
        model: None,
        top: DEFAULT_TOP,
        resize: None,
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "top" => {
                parsed.top = value
                    .parse()
                    .ok()
                    .filter(|top| (1..=MAX_TOP).contains(top))
                    .ok_or_else(|| {
                        format!(
                            "top must be a whole number from 1 to {MAX_TOP}, got {:?}",
                            shorten(&value)
                        )
                    })?;
            }
            "model" => {
                if value.len() > MAX_MODEL_NAME {
                    return Err(format!(
                        "model names are at most {MAX_MODEL_NAME} bytes, got {}",
                        value.len()
                    ));
                }
                parsed.model = Some(value.into_owned());
            }
            "resize" => {
                parsed.resize = Some(
                    <ResizeMode as clap::ValueEnum>::from_str(&value, true).map_err(|_| {
                        format!(
                            "resize must be center-crop, squash-nearest or squash-bilinear, got {:?}",
                            shorten(&value)
                        )
                    })?,
                );
            }
            _ => {}
        }
    }
    Ok(parsed)
}

/// At most 64 characters of a caller's value, for error messages.
fn shorten(value: &str) -> String {
    value.chars().take(64).collect()
}

/// `Accept: text/plain` (and no JSON) asks for the original service's line.
pub fn wants_text(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| accept.contains("text/plain") && !accept.contains("json"))
}

/// The caller's `X-Call-Id` when it is a printable token of at most 128 bytes: it is
/// echoed in a header and in logs, so nothing else passes.
pub fn sane_call_id(header: Option<&str>) -> Option<&str> {
    header
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_refuse_what_they_should() {
        let query = parse_query("top=3&model=resnet50&resize=squash-nearest&x=1").unwrap();
        assert_eq!(query.top, 3);
        assert_eq!(query.model.as_deref(), Some("resnet50"));
        assert_eq!(query.resize, Some(ResizeMode::SquashNearest));
        assert_eq!(parse_query("").unwrap().top, DEFAULT_TOP);
        for bad in ["top=0", "top=1001", "top=-1", "top=%FF", "resize=big"] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
        let long = format!("top={}", "9".repeat(10_000));
        assert!(
            parse_query(&long).unwrap_err().len() < 200,
            "errors stay short"
        );
        assert!(parse_query(&format!("model={}", "m".repeat(129))).is_err());
    }

    #[test]
    fn call_ids_are_printable_short_tokens() {
        assert_eq!(sane_call_id(Some("abc-1")), Some("abc-1"));
        assert_eq!(sane_call_id(Some("a b")), None);
        assert_eq!(sane_call_id(Some("")), None);
        assert_eq!(sane_call_id(Some(&"x".repeat(129))), None);
    }
}
