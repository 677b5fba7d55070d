//! HTTP/1.1 framing for the admin API: a bounded request parser on top of
//! `httparse` (which parses the head without allocating) and the response
//! writer. One request per connection (`Connection: close`); no chunked
//! bodies. Depends on nothing else in the crate.

use serde_json::json;

/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest request body.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 32;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method, as sent (`GET`, `POST`…).
    pub method: String,
    /// Path, percent-decoded, without the query.
    pub path: String,
    /// Query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// `Authorization: Bearer …` token, if any.
    pub token: Option<String>,
    /// Body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

/// What the bytes received so far amount to.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A whole request.
    Done(Request),
    /// A request that cannot be served: answer this and close.
    Bad(Response),
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
    /// Methods allowed (405 only).
    pub allow: Option<&'static str>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
            allow: None,
        }
    }

    /// A JSON error: `{"error": msg, "status": code}`.
    pub fn error(status: u16, msg: impl Into<String>) -> Response {
        Response::json(status, &json!({"error": msg.into(), "status": status}))
    }

    /// A plain-text response.
    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            body: body.into_bytes(),
            allow: None,
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(a) = self.allow {
            out.push_str("Allow: ");
            out.push_str(a);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut v = out.into_bytes();
        v.extend_from_slice(&self.body);
        v
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Parses what a connection sent so far. Never panics; bounded by
/// [`MAX_HEAD`] and [`MAX_BODY`].
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::Bad(Response::error(
                413,
                format!("request head longer than {MAX_HEAD} bytes"),
            ))
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad(Response::error(
                413,
                format!("more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => return Parsed::Bad(Response::error(400, format!("malformed request: {e}"))),
    };
    if head_len > MAX_HEAD {
        return Parsed::Bad(Response::error(
            413,
            format!("request head longer than {MAX_HEAD} bytes"),
        ));
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Bad(Response::error(400, "malformed request line"));
    };
    let mut length = 0usize;
    let mut token = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => length = n,
                None => return Parsed::Bad(Response::error(400, "invalid Content-Length")),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad(Response::error(
                411,
                "chunked bodies are not accepted; send Content-Length",
            ));
        } else if h.name.eq_ignore_ascii_case("authorization") {
            token = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().strip_prefix("Bearer "))
                .map(|t| t.trim().to_string());
        }
    }
    if length > MAX_BODY {
        return Parsed::Bad(Response::error(
            413,
            format!("request body of {length} bytes; the limit is {MAX_BODY}"),
        ));
    }
    if buf.len() < head_len + length {
        return Parsed::Partial;
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let Some(path) = percent_decode(raw_path) else {
        return Parsed::Bad(Response::error(400, "invalid percent-encoding in the path"));
    };
    let mut query = Vec::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (percent_decode(k), percent_decode(v)) {
            (Some(k), Some(v)) => query.push((k, v)),
            _ => {
                return Parsed::Bad(Response::error(
                    400,
                    "invalid percent-encoding in the query",
                ))
            }
        }
    }
    Parsed::Done(Request {
        method: method.to_string(),
        path,
        query,
        token,
        body: buf[head_len..head_len + length].to_vec(),
    })
}

/// Decodes `%XX` escapes and `+` (as a space); None when invalid or not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a query or path component (unreserved characters kept).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@*".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(b: &[u8]) -> Request {
        match parse(b) {
            Parsed::Done(r) => r,
            p => panic!("{p:?}"),
        }
    }

    fn status(b: &[u8]) -> u16 {
        match parse(b) {
            Parsed::Bad(r) => r.status,
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn parses_query_body_and_token() {
        let r = done(b"POST /v1/hold?sender=a%40b.c&x=1+2 HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/hold");
        assert_eq!(
            r.query,
            vec![
                ("sender".into(), "a@b.c".into()),
                ("x".into(), "1 2".into())
            ]
        );
        assert_eq!(r.token.as_deref(), Some("s3cret"));
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn waits_for_the_whole_body_and_bounds_everything() {
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Parsed::Partial
        ));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost:"), Parsed::Partial));
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            413
        );
        let mut long = b"GET /".to_vec();
        long.extend(vec![b'a'; MAX_HEAD + 1]);
        assert_eq!(status(&long), 413);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(status(b"GET /%zz HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"\x00\x01 HTTP/1.1\r\n\r\n"), 400);
    }

    #[test]
    fn percent_round_trip() {
        let s = "a b/c?d=é&*@x";
        assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
    }
}
