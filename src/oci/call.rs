//! One registry request as the client sends it (and sends again after an
//! auth challenge, a redirect or a retry): [`Call`].

use bytes::Bytes;
use hyper::header::{self, HeaderName};
use hyper::Method;

/// One request: method, the headers that vary, and a body that is cheap to
/// send again (after an auth challenge, a redirect or a retry).
#[derive(Debug, Clone)]
pub(crate) struct Call<'a> {
    pub method: Method,
    pub accept: Option<&'a str>,
    pub range: Option<&'a str>,
    /// Other headers: `Content-Type`, `Content-Range`, `If-Match`, ...
    pub headers: Vec<(HeaderName, String)>,
    pub body: Bytes,
}

impl<'a> Call<'a> {
    /// A GET.
    pub fn get(accept: Option<&'a str>, range: Option<&'a str>) -> Self {
        Call {
            method: Method::GET,
            accept,
            range,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A request without a body.
    pub fn bare(method: Method) -> Self {
        Call {
            method,
            ..Call::get(None, None)
        }
    }

    /// The same with `body` of media type `content_type`.
    pub fn with_body(mut self, content_type: &str, body: Bytes) -> Self {
        self.headers
            .push((header::CONTENT_TYPE, content_type.to_string()));
        self.body = body;
        self
    }

    /// The same with one more header.
    pub fn with_header(mut self, name: HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Whether the request writes to the registry (the hint of a refusal).
    pub fn writes(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD)
    }
}
