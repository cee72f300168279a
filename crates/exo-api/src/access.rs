//! Who may use the API: the API key and the origins web pages may call it from, checked in one layer before any
//! handler runs (so a refused request never has its body read).
//!
//! A request with an `Origin` header (a browser sends one with every cross-origin request, and with same-origin
//! ones that are not plain GETs) is refused with 403 unless the origin is this node itself (its host and port are
//! the request's `Host`) or one the operator listed (`--cors-origin`). This matters most for the requests browsers
//! send without asking first (a `text/plain` POST holding JSON): CORS headers only decide whether the page may
//! read the answer, but by then the request has run. A listed origin's requests get `Access-Control-Allow-Origin`
//! and its preflights (`OPTIONS`) are answered here.
//!
//! With an API key, every route but the health check and the web chat's files needs `Authorization: Bearer KEY`
//! or `x-api-key: KEY`; anything else is 401. The key is compared in constant time.
//!
//! This module does not know the routes; [`crate::server`] says which paths are public.

use std::hint::black_box;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The node's access rules.
#[derive(Clone, Default)]
pub struct Access {
    api_key: Option<Vec<u8>>,
    /// Normalized as [`parse_origin`] returns them.
    origins: Vec<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("Access")
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("origins", &self.origins)
            .finish()
    }
}

impl Access {
    /// Rules with `api_key` (as [`parse_api_key`] accepts it) and the cross-origin `origins` allowed (as
    /// [`parse_origin`] accepts them). An empty key lets no request in.
    pub fn new(api_key: Option<String>, origins: Vec<String>) -> Self {
        let origins = origins.iter().map(|o| normalize_origin(o)).collect();
        Self { api_key: api_key.map(String::into_bytes), origins }
    }

    /// Whether a key is required.
    pub fn keyed(&self) -> bool {
        self.api_key.is_some()
    }

    /// Whether `headers` carry the key, as `Authorization: Bearer KEY` or `x-api-key: KEY`.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.api_key else { return true };
        let bearer = headers.get_all(header::AUTHORIZATION).iter().filter_map(|v| {
            let v = v.to_str().ok()?.trim();
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let x_api_key = headers.get_all("x-api-key").iter().filter_map(|v| v.to_str().ok().map(str::trim));
        // Every credential offered is compared, so the time taken does not say which header held a near miss.
        bearer.chain(x_api_key).fold(false, |ok, given| same_key(given.as_bytes(), key) | ok)
    }

    fn listed(&self, origin: &str) -> bool {
        let origin = normalize_origin(origin);
        self.origins.contains(&origin)
    }
}

/// Whether `given` equals `key`, in time that depends on `given`'s length only (which the client knows), never
/// on the key's bytes or its length: every byte of `given` is compared with the key's byte at that position
/// (cycling over a shorter key), and the length difference is folded in rather than returned early. Written
/// here rather than taken from `subtle` to keep the API crate's dependencies (and the shared lock file) as they
/// are for a dozen lines.
fn same_key(given: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    let mut diff = u8::from(given.len() != key.len());
    for (i, &b) in given.iter().enumerate() {
        // `black_box` keeps the compiler from ending the loop once `diff` is known to be non-zero.
        diff = black_box(diff | (b ^ key[i % key.len()]));
    }
    diff == 0
}

/// Checks an API key given on the command line: 1 to 1024 visible ASCII characters (what an HTTP header can
/// carry unchanged).
pub fn parse_api_key(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("the API key is empty; give a key, or leave the option out for an open API".into());
    }
    if key.len() > 1024 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an API key is 1 to 1024 visible ASCII characters (no spaces)".into());
    }
    Ok(key.to_string())
}

/// Checks an origin given on the command line (`scheme://host[:port]`, as a browser sends it in `Origin`) and
/// returns it lower-cased, without a trailing `/` or the scheme's default port.
pub fn parse_origin(origin: &str) -> Result<String, String> {
    let bad = || {
        format!("'{origin}' is not an origin: write scheme://host or scheme://host:port, e.g. http://localhost:3000")
    };
    let (scheme, authority) = origin.trim().trim_end_matches('/').split_once("://").ok_or_else(bad)?;
    let scheme_ok = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let authority_ok = !authority.is_empty()
        && authority.chars().all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c))
        && authority.rsplit_once(':').is_none_or(|(host, port)| {
            // An IPv6 address without a port ends in ']'.
            authority.ends_with(']') || (!host.is_empty() && port.parse::<u16>().is_ok())
        });
    if !scheme_ok || !authority_ok {
        return Err(bad());
    }
    Ok(normalize_origin(origin))
}

fn normalize_origin(origin: &str) -> String {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    match origin.split_once("://") {
        Some((scheme, authority)) => format!("{scheme}://{}", without_default_port(scheme, authority)),
        None => origin,
    }
}

fn without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// Whether `origin` is the node as the request reached it: its host and port are the request's `Host`.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let (Some((scheme, authority)), Some(host)) = (origin.split_once("://"), host) else { return false };
    let scheme = scheme.to_ascii_lowercase();
    let (authority, host) = (authority.to_ascii_lowercase(), host.trim().to_ascii_lowercase());
    without_default_port(&scheme, &authority) == without_default_port(&scheme, &host)
}

/// What the layer needs: the rules, and which paths need no key.
#[derive(Clone)]
pub(crate) struct Guard {
    pub access: Access,
    pub public: fn(&str) -> bool,
}

/// The layer: refuses cross-origin requests from origins not listed and requests without the key, answers
/// listed origins' preflights, and marks listed origins' responses readable to them.
pub(crate) async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let access = &guard.access;
    // Allowed cross-origin: the value to send back in Access-Control-Allow-Origin.
    let mut allow = None;
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let text = origin.to_str().unwrap_or("");
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        if access.listed(text) {
            allow = Some(origin.clone());
        } else if !same_origin(text, host) {
            return ApiError::CrossOrigin(text.chars().take(200).collect()).into_response();
        }
    }
    if let (Some(origin), &Method::OPTIONS) = (&allow, request.method()) {
        return preflight(origin, request.headers());
    }
    let mut response = if !(guard.public)(request.uri().path()) && !access.authorized(request.headers()) {
        let given =
            request.headers().contains_key(header::AUTHORIZATION) || request.headers().contains_key("x-api-key");
        ApiError::Unauthorized { key_given: given }.into_response()
    } else {
        next.run(request).await
    };
    if let Some(origin) = allow {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The answer to a listed origin's preflight: the methods, and the headers it asked for, may be used.
fn preflight(origin: &HeaderValue, request: &HeaderMap) -> Response {
    let asked = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        asked.unwrap_or(HeaderValue::from_static("authorization, content-type, x-api-key")),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    // Chrome asks before a public site's page may reach a private address (Private Network Access); the operator
    // listed this origin, so it may.
    if request.get("access-control-request-private-network").is_some_and(|v| v == "true") {
        headers.insert("access-control-allow-private-network", HeaderValue::from_static("true"));
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_only_when_equal() {
        assert!(same_key(b"right-key", b"right-key"));
        for wrong in [&b""[..], b"right-ke", b"right-key2", b"right-kez", b"Right-key", b"right-keyright-key"] {
            assert!(!same_key(wrong, b"right-key"), "{:?}", String::from_utf8_lossy(wrong));
        }
        assert!(!same_key(b"", b""), "an empty key lets no one in");
    }

    #[test]
    fn either_header_carries_the_key() {
        let access = Access::new(Some("k1".into()), vec![]);
        let with = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            access.authorized(&h)
        };
        assert!(with("authorization", "Bearer k1"));
        assert!(with("authorization", "bearer  k1 "));
        assert!(with("x-api-key", "k1"));
        assert!(!with("authorization", "Basic k1"));
        assert!(!with("authorization", "Bearer k2"));
        assert!(!with("x-api-key", "k2"));
        assert!(!access.authorized(&HeaderMap::new()));
        assert!(Access::default().authorized(&HeaderMap::new()), "no key: open");
    }

    #[test]
    fn origins_are_checked_and_normalized() {
        assert_eq!(parse_origin("HTTP://Evil.Example/").unwrap(), "http://evil.example");
        assert_eq!(parse_origin("https://a.example:443").unwrap(), "https://a.example");
        assert_eq!(parse_origin("http://localhost:3000").unwrap(), "http://localhost:3000");
        assert_eq!(parse_origin("http://[::1]").unwrap(), "http://[::1]");
        for bad in ["evil.example", "http://", "http://a.example/path", "http://a:b", "://a", "http://a b"] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
        assert!(parse_api_key("").is_err() && parse_api_key("a b").is_err() && parse_api_key("s3cr3t").is_ok());
    }

    #[test]
    fn same_origin_is_the_requests_host_and_port() {
        assert!(same_origin("http://localhost:52415", Some("localhost:52415")));
        assert!(same_origin("http://Example.com", Some("example.com:80")));
        assert!(!same_origin("http://localhost:3000", Some("localhost:52415")));
        assert!(!same_origin("http://evil.example", Some("localhost:52415")));
        assert!(!same_origin("null", Some("localhost:52415")));
        assert!(!same_origin("http://localhost:52415", None));
        let access = Access::new(None, vec!["http://evil.example".into()]);
        assert!(access.listed("http://EVIL.example") && !access.listed("http://evil.example:8080"));
    }
}
