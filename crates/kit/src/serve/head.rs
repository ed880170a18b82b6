//! The request-head check: counts a request head's bytes, header lines and URL as they arrive,
//! so that an oversized head is answered in the envelope (431 `headers_too_large`, 414
//! `url_too_long`) before hyper sees it. hyper has the same limits but answers them itself with
//! an empty body; its limits stay set a little above these, as a backstop.

use proto::error::ErrorCode;

use crate::ApiError;

/// Limits of one request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Most bytes of the request line and headers together.
    pub max_head_bytes: usize,
    /// Most header lines.
    pub max_headers: usize,
    /// Most bytes of the request target (path and query).
    pub max_url_bytes: usize,
}

/// Where the scan is within the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before the request line (empty lines there are allowed and skipped).
    Start,
    /// In the method.
    Method,
    /// In the request target.
    Target,
    /// In the rest of the request line (the version).
    Version,
    /// In the header lines.
    Headers,
    /// Past the blank line: the rest (body, a pipelined request) is not looked at.
    Done,
}

/// The scan of one request head, fed the bytes as they are read.
#[derive(Debug, Clone)]
pub(crate) struct HeadScan {
    limits: HeadLimits,
    at: At,
    bytes: usize,
    target: usize,
    headers: usize,
    /// Bytes of the current line, `\r` included.
    line: usize,
}

impl HeadScan {
    pub(crate) fn new(limits: HeadLimits) -> Self {
        Self {
            limits,
            at: At::Start,
            bytes: 0,
            target: 0,
            headers: 0,
            line: 0,
        }
    }

    /// Starts over, for the next request on the connection.
    pub(crate) fn reset(&mut self) {
        *self = Self::new(self.limits);
    }

    /// Feeds `chunk`; an error when the head has gone over a limit.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<(), Oversized> {
        for &b in chunk {
            if self.at == At::Done {
                return Ok(());
            }
            if self.at != At::Start {
                self.bytes += 1;
            }
            match (self.at, b) {
                (At::Start, b'\r' | b'\n') => {}
                (At::Start, _) => {
                    self.at = At::Method;
                    self.bytes = 1;
                }
                (At::Method, b' ') => self.at = At::Target,
                (At::Target, b' ') => self.at = At::Version,
                (At::Target, b'\n') => self.at = At::Headers,
                (At::Target, _) => {
                    self.target += 1;
                    if self.target > self.limits.max_url_bytes {
                        return Err(Oversized::Url);
                    }
                }
                (At::Method | At::Version, b'\n') => self.at = At::Headers,
                (At::Headers, b'\n') => {
                    if self.line <= 1 {
                        self.at = At::Done;
                        return Ok(());
                    }
                    self.headers += 1;
                    self.line = 0;
                    if self.headers > self.limits.max_headers {
                        return Err(Oversized::Head);
                    }
                }
                (At::Headers, _) => self.line += 1,
                _ => {}
            }
            if self.bytes > self.limits.max_head_bytes {
                return Err(Oversized::Head);
            }
        }
        Ok(())
    }
}

/// Which limit a head went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Oversized {
    Head,
    Url,
}

impl Oversized {
    /// Why the connection closed, as the metric's `reason`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Head => "headers_too_large",
            Self::Url => "url_too_long",
        }
    }
}

/// Whole HTTP/1.1 replies (status line, headers and envelope) written straight to a socket by the
/// listener, outside any router: made once per listener.
#[derive(Debug, Clone)]
pub(crate) struct Replies {
    pub(crate) head_too_large: Vec<u8>,
    pub(crate) url_too_long: Vec<u8>,
    pub(crate) too_many_connections: Vec<u8>,
}

impl Replies {
    pub(crate) fn new(limits: HeadLimits) -> Self {
        Self {
            head_too_large: raw_reply(&ApiError::new(
                ErrorCode::HeadersTooLarge,
                format!(
                    "the request's headers are larger than this server accepts (at most {} bytes and {} headers)",
                    limits.max_head_bytes, limits.max_headers
                ),
            )),
            url_too_long: raw_reply(&ApiError::new(
                ErrorCode::UrlTooLong,
                format!(
                    "the request's URL is longer than this server accepts (at most {} bytes)",
                    limits.max_url_bytes
                ),
            )),
            too_many_connections: raw_reply(&ApiError::new(
                ErrorCode::TooManyConnections,
                "too many open connections from this address or to this port; close some or retry later",
            )),
        }
    }

    pub(crate) fn for_oversized(&self, o: Oversized) -> &[u8] {
        match o {
            Oversized::Head => &self.head_too_large,
            Oversized::Url => &self.url_too_long,
        }
    }
}

/// `error` as a complete reply that closes the connection.
fn raw_reply(error: &ApiError) -> Vec<u8> {
    let status = error.status();
    let body = error.body_bytes();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 200,
        max_headers: 3,
        max_url_bytes: 20,
    };

    fn scan(chunks: &[&[u8]]) -> Result<At, Oversized> {
        let mut s = HeadScan::new(LIMITS);
        for c in chunks {
            s.feed(c)?;
        }
        Ok(s.at)
    }

    #[test]
    fn a_head_within_the_limits_passes_however_it_is_split() {
        let head = b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-A: b\r\n\r\n";
        assert_eq!(scan(&[head]), Ok(At::Done));
        let bytes: Vec<&[u8]> = head.chunks(1).collect();
        assert_eq!(scan(&bytes), Ok(At::Done), "byte by byte");
        assert_eq!(
            scan(&[b"\r\n\r\nGET / HTTP/1.1\n", b"Host: a\n\n"]),
            Ok(At::Done),
            "leading empty lines and bare LFs"
        );
    }

    #[test]
    fn what_follows_the_head_is_not_counted() {
        let mut req = b"POST /a HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'x', 10_000));
        assert_eq!(scan(&[&req]), Ok(At::Done));
    }

    #[test]
    fn too_many_headers_too_many_bytes_and_a_long_url_are_refused() {
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"]),
            Err(Oversized::Head)
        );
        let long_header = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "x".repeat(300));
        assert_eq!(scan(&[long_header.as_bytes()]), Err(Oversized::Head));
        let long_url = format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(20));
        assert_eq!(scan(&[long_url.as_bytes()]), Err(Oversized::Url));
        let ok_url = format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(19));
        assert_eq!(scan(&[ok_url.as_bytes()]), Ok(At::Done));
        // A head that never ends is refused once it has grown past the limit.
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\r\nA: ", &[b'y'; 250]]),
            Err(Oversized::Head)
        );
    }

    #[test]
    fn a_reset_scan_counts_the_next_head_afresh() {
        let mut s = HeadScan::new(LIMITS);
        let head = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        s.feed(head).expect("within");
        s.reset();
        s.feed(head).expect("within again");
        assert_eq!(s.at, At::Done);
    }

    #[test]
    fn the_replies_are_whole_http_responses_with_the_envelope() {
        let r = Replies::new(LIMITS);
        let text = String::from_utf8(r.head_too_large.clone()).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["code"], 431);
        assert_eq!(v["error"], "headers_too_large");
        assert!(v["data"].is_null());
        let url = String::from_utf8(r.url_too_long.clone()).expect("utf-8");
        assert!(url.starts_with("HTTP/1.1 414 ") && url.contains("\"url_too_long\""));
        let full = String::from_utf8(r.too_many_connections.clone()).expect("utf-8");
        assert!(full.starts_with("HTTP/1.1 503 ") && full.contains("\"too_many_connections\""));
    }
}
