//! The response headers the registry client reads, parsed from their text:
//! `Content-Length`, `Content-Range`, `Link` (the next page of a list),
//! `Retry-After`.

use std::time::Duration;

use hyper::header::{self, HeaderMap};

/// The `Content-Length` header, if present and numeric.
pub(crate) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A parsed `Content-Range: bytes a-b/total` (`total` may be `*`), or
/// `bytes */total` (first two `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ContentRange {
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub total: Option<u64>,
}

/// Parses a `Content-Range` header value.
pub(crate) fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if range.trim() == "*" {
        return Some(ContentRange {
            first: None,
            last: None,
            total,
        });
    }
    let (a, b) = range.trim().split_once('-')?;
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    if b < a || total.is_some_and(|t| b >= t) {
        return None;
    }
    Some(ContentRange {
        first: Some(a),
        last: Some(b),
        total,
    })
}

/// The target of a `Link: <url>; rel="next"` header.
pub(crate) fn next_link(h: &HeaderMap) -> Option<String> {
    h.get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|l| {
            l.split(';')
                .skip(1)
                .any(|p| p.trim().trim_matches('"') == "rel=next" || p.trim() == "rel=\"next\"")
        })
        .and_then(|l| {
            let l = l.trim();
            Some(l.strip_prefix('<')?.split_once('>')?.0.to_string())
        })
}

/// `Retry-After` in delta-seconds (an HTTP-date is not worth a parser
/// here: it falls back to the usual backoff).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn content_ranges() {
        let r = parse_content_range("bytes 0-4095/44673554").unwrap();
        assert_eq!(
            (r.first, r.last, r.total),
            (Some(0), Some(4095), Some(44673554))
        );
        let r = parse_content_range("bytes */100").unwrap();
        assert_eq!((r.first, r.total), (None, Some(100)));
        assert!(parse_content_range("bytes 5-4/10").is_none());
        assert!(parse_content_range("bytes 5-10/10").is_none());
        assert!(parse_content_range("items 0-1/2").is_none());
        assert_eq!(parse_content_range("bytes 0-1/*").unwrap().total, None);
    }

    #[test]
    fn link_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            "</v2/r/referrers/sha256:ab?n=1&last=x>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("/v2/r/referrers/sha256:ab?n=1&last=x")
        );
        h.insert(header::LINK, "<x>; rel=\"prev\"".parse().unwrap());
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static(" 3 "));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
