//! The one piece of `multipart/form-data` we need: the file a browser form uploads.
//! Bodies are already bounded in size; this only slices them, never copies parts.

/// Why a multipart body yields no file.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("the multipart Content-Type has no boundary")]
    NoBoundary,
    #[error("the multipart body is malformed: {0}")]
    Malformed(&'static str),
    #[error("the multipart body has no file part")]
    NoFile,
}

/// The boundary parameter of a `multipart/form-data` Content-Type, if it is one.
/// `Ok(None)` for any other content type.
pub fn boundary(content_type: &str) -> Result<Option<&str>, MultipartError> {
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Ok(None);
    }
    for param in params {
        if let Some((key, value)) = param.split_once('=') {
            if key.trim().eq_ignore_ascii_case("boundary") {
                let value = value.trim().trim_matches('"');
                if value.is_empty() || value.len() > 200 {
                    return Err(MultipartError::NoBoundary);
                }
                return Ok(Some(value));
            }
        }
    }
    Err(MultipartError::NoBoundary)
}

/// The content of the first part that carries a file (a `filename` in its
/// Content-Disposition); failing that, of the only part when there is exactly one.
pub fn file_part<'a>(body: &'a [u8], boundary: &str) -> Result<&'a [u8], MultipartError> {
    let delimiter = [b"--", boundary.as_bytes()].concat();
    let mut parts = Vec::new();
    let mut rest = match find(body, &delimiter) {
        Some(start) => &body[start + delimiter.len()..],
        None => return Err(MultipartError::Malformed("no boundary line")),
    };
    loop {
        if rest.starts_with(b"--") {
            break; // closing delimiter
        }
        rest = strip_line_end(rest).ok_or(MultipartError::Malformed(
            "boundary line not followed by a line end",
        ))?;
        let header_end =
            find(rest, b"\r\n\r\n").ok_or(MultipartError::Malformed("part headers never end"))?;
        let headers = &rest[..header_end];
        let content_start = &rest[header_end + 4..];
        let next = [b"\r\n", delimiter.as_slice()].concat();
        let content_end =
            find(content_start, &next).ok_or(MultipartError::Malformed("a part never ends"))?;
        parts.push((headers, &content_start[..content_end]));
        rest = &content_start[content_end + next.len()..];
    }
    let has_filename = |headers: &[u8]| {
        String::from_utf8_lossy(headers).lines().any(|line| {
            let line = line.to_ascii_lowercase();
            line.starts_with("content-disposition:") && line.contains("filename=")
        })
    };
    match parts.iter().find(|(headers, _)| has_filename(headers)) {
        Some((_, content)) => Ok(content),
        None if parts.len() == 1 => Ok(parts[0].1),
        None => Err(MultipartError::NoFile),
    }
}

fn strip_line_end(bytes: &[u8]) -> Option<&[u8]> {
    bytes
        .strip_prefix(b"\r\n")
        .or_else(|| bytes.strip_prefix(b"\n"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (disposition, content) in parts {
            body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; ");
            body.extend_from_slice(disposition.as_bytes());
            body.extend_from_slice(b"\r\nContent-Type: application/octet-stream\r\n\r\n");
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    #[test]
    fn finds_the_boundary() {
        assert_eq!(
            boundary("multipart/form-data; boundary=XyZ").unwrap(),
            Some("XyZ")
        );
        assert_eq!(
            boundary("Multipart/Form-Data;boundary=\"a b\"").unwrap(),
            Some("a b")
        );
        assert_eq!(boundary("image/jpeg").unwrap(), None);
        assert_eq!(
            boundary("multipart/form-data").unwrap_err(),
            MultipartError::NoBoundary
        );
    }

    #[test]
    fn picks_the_file_part() {
        let body = form(&[
            ("name=\"top\"", b"5"),
            (
                "name=\"image\"; filename=\"t.jpg\"",
                b"\xff\xd8bytes\r\n--almost",
            ),
        ]);
        assert_eq!(
            file_part(&body, "XyZ").unwrap(),
            b"\xff\xd8bytes\r\n--almost"
        );
    }

    #[test]
    fn a_single_part_without_filename_is_the_file() {
        let body = form(&[("name=\"image\"", b"data")]);
        assert_eq!(file_part(&body, "XyZ").unwrap(), b"data");
    }

    #[test]
    fn refuses_forms_without_a_file_and_broken_bodies() {
        let body = form(&[("name=\"a\"", b"1"), ("name=\"b\"", b"2")]);
        assert_eq!(file_part(&body, "XyZ").unwrap_err(), MultipartError::NoFile);
        assert_eq!(
            file_part(b"--XyZ--\r\n", "XyZ").unwrap_err(),
            MultipartError::NoFile
        );
        assert!(matches!(
            file_part(b"garbage", "XyZ"),
            Err(MultipartError::Malformed(_))
        ));
        let truncated = &form(&[("name=\"image\"; filename=\"x\"", b"data")])[..60];
        assert!(matches!(
            file_part(truncated, "XyZ"),
            Err(MultipartError::Malformed(_))
        ));
        assert!(matches!(
            file_part(b"--XyZ\r\nContent-Disposition: x", "XyZ"),
            Err(MultipartError::Malformed(_))
        ));
    }
}
