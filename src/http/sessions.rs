//! Who a request comes from: the tokens it may present (`Authorization: Bearer`, `/?token=`,
//! the older `vpd_token` cookie) and the sessions a sign-in starts, with their anti-CSRF
//! tokens and the same-origin check state changes need.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};

/// The cookie a signed-in browser holds: a random 256-bit session id, never the token.
pub const SESSION_COOKIE: &str = "vpd_session";
/// A session unused for this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// A session ends this long after sign-in, however much it is used.
pub const SESSION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Sessions held at once; past it, the least recently used one ends.
const MAX_SESSIONS: usize = 4096;
/// The header a state-changing request carries its session's anti-CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The cookie a browser keeps the dashboard's token in, once given `/?token=…`.
const TOKEN_COOKIE: &str = "vpd_token";

/// Who a request comes from: a client of the tokens file (or `anonymous` where none is
/// needed), and whether its role lets it change anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The client's name.
    pub name: String,
    /// Whether it may upload and control jobs (the `submit` role), not only look.
    pub may_change: bool,
}

/// One signed-in browser.
struct Session {
    name: String,
    csrf: String,
    may_change: bool,
    started: Instant,
    used: Instant,
}

/// The sessions of one listener, by the SHA-256 of their cookie (a leaked table holds no
/// cookie).
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<[u8; 32], Session>>);

/// The session a request presented, as checked.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Who.
    pub who: Identity,
    /// Its anti-CSRF token.
    pub csrf: String,
}

fn random_hex() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(cookie: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(cookie.as_bytes()).into()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for `who`; returns its cookie's value.
    pub fn start(&self, who: &Identity) -> String {
        let cookie = random_hex();
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        let session =
            Session { name: who.name.clone(), csrf: random_hex(), may_change: who.may_change, started: now, used: now };
        map.insert(digest(&cookie), session);
        cookie
    }

    /// The live session `cookie` names, checked against the tokens file through `recheck`
    /// (a client removed from it is signed out at once), and marked used.
    pub fn check(&self, cookie: &str, recheck: impl Fn(&str) -> Option<Identity>) -> Option<Signed> {
        let key = digest(cookie);
        let now = Instant::now();
        let mut map = self.lock();
        let session = map.get_mut(&key)?;
        let who = if live(session, now) { recheck(&session.name) } else { None };
        let Some(who) = who else {
            map.remove(&key);
            return None;
        };
        session.used = now;
        session.may_change = who.may_change;
        Some(Signed { who, csrf: session.csrf.clone() })
    }

    /// Ends the session `cookie` names.
    pub fn end(&self, cookie: &str) {
        self.lock().remove(&digest(cookie));
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.used) < SESSION_IDLE && now.duration_since(s.started) < SESSION_MAX
}

/// The session cookie's value in a request's `Cookie` headers.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
}

/// The `Set-Cookie` of a new session (or, with an empty value, of its end).
pub fn set_session_cookie(cookie: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    let age = if cookie.is_empty() { 0 } else { SESSION_MAX.as_secs() };
    format!("{SESSION_COOKIE}={cookie}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict{secure}")
}

/// Whether a request comes from a page of this origin: `Sec-Fetch-Site: same-origin` where
/// the browser sends it, else an `Origin` naming this host. A request with neither is not
/// taken for one.
pub fn same_origin(headers: &HeaderMap, tls: bool) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "same-origin";
    }
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
}

/// The token a request presents, and whether it came in the address (`/?token=…`).
pub fn presented_token(request: &Request<Incoming>) -> Option<(String, bool)> {
    let headers = request.headers();
    if let Some(bearer) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()?.strip_prefix("Bearer ")) {
        return Some((bearer.trim().to_string(), false));
    }
    if request.uri().path() == "/"
        && let Some(token) = request.uri().query().and_then(token_in_query)
    {
        return Some((token, true));
    }
    token_in_cookies(headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok())).map(|t| (t, false))
}

/// The `token` in a query string, decoded as a form: a token with `+`, `/` or `=` in it (as
/// base64 makes them) arrives percent-encoded from a link or a browser.
fn token_in_query(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "token").map(|(_, value)| value.into_owned())
}

/// The cookie that kept `token` in a browser before sessions (browsers may still hold one,
/// which is still read): percent-encoded, so that any token fits a
/// cookie's value (no `;`, `,`, space or quote).
#[cfg(test)]
fn token_cookie(token: &str, secure: bool) -> String {
    let value = percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC);
    let secure = if secure { "; Secure" } else { "" };
    format!("{TOKEN_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// The token in the `Cookie` headers' values, as `token_cookie` wrote it.
fn token_in_cookies<'a>(headers: impl Iterator<Item = &'a str>) -> Option<String> {
    let value =
        headers.flat_map(|v| v.split(';')).find_map(|kv| kv.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))?;
    percent_encoding::percent_decode_str(value).decode_utf8().ok().map(|t| t.into_owned())
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    #[test]
    fn sessions_end_when_idle_removed_or_signed_out() {
        let sessions = Sessions::default();
        let alice = Identity { name: "alice".into(), may_change: true };
        let cookie = sessions.start(&alice);
        assert_eq!(cookie.len(), 64, "256 random bits");
        let signed = sessions.check(&cookie, |n| Some(Identity { name: n.into(), may_change: true })).unwrap();
        assert_eq!(signed.who, alice);
        assert_eq!(signed.csrf.len(), 64);
        assert_ne!(signed.csrf, cookie);
        assert!(sessions.check("not-a-session", |_| None).is_none());
        // Removed from the tokens file: signed out, for good.
        assert!(sessions.check(&cookie, |_| None).is_none());
        assert!(sessions.check(&cookie, |n| Some(Identity { name: n.into(), may_change: true })).is_none());
        // A role changed on reload is the session's now.
        let cookie = sessions.start(&alice);
        let read = sessions.check(&cookie, |n| Some(Identity { name: n.into(), may_change: false })).unwrap();
        assert!(!read.who.may_change);
        sessions.end(&cookie);
        assert!(sessions.check(&cookie, |n| Some(Identity { name: n.into(), may_change: true })).is_none());
        // Idle too long.
        let cookie = sessions.start(&alice);
        sessions.lock().values_mut().for_each(|s| s.used -= SESSION_IDLE);
        assert!(sessions.check(&cookie, |n| Some(Identity { name: n.into(), may_change: true })).is_none());
    }

    #[test]
    fn only_this_origin_counts_as_the_same() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")]), false));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "cross-site"), ("origin", "http://h:1"), ("host", "h:1")]),
            false
        ));
        assert!(same_origin(&headers(&[("origin", "http://h:1"), ("host", "h:1")]), false));
        assert!(!same_origin(&headers(&[("origin", "http://h:1"), ("host", "h:1")]), true), "the scheme counts");
        assert!(!same_origin(&headers(&[("origin", "http://evil:1"), ("host", "h:1")]), false));
        assert!(!same_origin(&headers(&[("host", "h:1")]), false), "no origin at all is not the same");
    }

    #[test]
    fn any_token_survives_the_address_and_the_cookie() {
        for token in ["plain-token-0123456789", "b64+token/with==", "semi;colon, space \"quote\" 100% é"] {
            let query = format!("x=1&token={}", form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>());
            assert_eq!(token_in_query(&query).as_deref(), Some(token), "{query}");
            let cookie = token_cookie(token, true);
            assert!(HeaderValue::from_str(&cookie).is_ok(), "{cookie}");
            let value = cookie.split(';').next().unwrap();
            assert!(!value.contains([' ', ',', '"', '\\']), "{cookie}");
            let sent = format!("theme=dark; {value}");
            assert_eq!(token_in_cookies([sent.as_str()].into_iter()).as_deref(), Some(token), "{sent}");
        }
        assert_eq!(token_in_query("token=a+b").as_deref(), Some("a b"), "a form's + is a space");
        assert_eq!(token_in_query("tokens=x&other=y"), None);
        assert_eq!(token_in_cookies(["vpd_token=%ZZ%FF"].into_iter()), None, "not UTF-8 once decoded: no token");
    }
}
