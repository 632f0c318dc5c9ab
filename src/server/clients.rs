//! Who a connection is, and what it may do: the tokens file (`--tokens-file`, reloaded on
//! SIGHUP) maps each token to a client's name, a role and limits; the one `--token` is a client
//! called `token` with no limits; no token at all lets everyone in as `anonymous`.
//!
//! ```toml
//! [[client]]
//! name = "alice"
//! token = "…"                # 16 characters or more
//! jobs = 2                   # queued or running at once
//! upload_per_hour = "20G"    # bytes uploaded in any hour
//! fps = 240                  # frames per second, her jobs together
//!
//! [[client]]
//! name = "wallboard"
//! token = "…"
//! role = "read"              # dashboards: list, show, attach, fetch; never submit or control
//! ```
//!
//! Tokens are compared in constant time, through their SHA-256, against every entry (no early
//! exit). Records and logs carry the client's name, never its token.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Deserialize;

use crate::protocol::message::Token;

/// The shortest token a tokens file may hold: guessing must be hopeless.
const MIN_TOKEN_CHARS: usize = 16;
/// The window of the upload limit.
const HOUR: Duration = Duration::from_secs(3600);

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submit jobs and control them, as well as read.
    #[default]
    Submit,
    /// List, show, attach and fetch: dashboards.
    Read,
}

/// A client's limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Jobs queued or running at once.
    pub jobs: Option<NonZeroUsize>,
    /// Bytes uploaded in any hour.
    pub upload_per_hour: Option<u64>,
    /// Frames per second, over all its jobs.
    pub fps: Option<f64>,
}

/// A client, as its token identifies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    /// Its name, in records and logs.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Its limits.
    pub limits: Limits,
}

impl Client {
    fn unlimited(name: &str) -> Arc<Client> {
        Arc::new(Client { name: name.to_string(), role: Role::Submit, limits: Limits::default() })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "client")]
    clients: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    token: String,
    #[serde(default)]
    role: Role,
    jobs: Option<NonZeroUsize>,
    upload_per_hour: Option<String>,
    fps: Option<f64>,
}

/// Every client the server knows, by token.
#[derive(Debug, Clone)]
pub struct Clients {
    by_token: Vec<([u8; 32], Arc<Client>)>,
    /// No token required: everyone is `anonymous`.
    open: bool,
}

impl Clients {
    /// Everyone, without a token.
    pub fn open() -> Self {
        Clients { by_token: Vec::new(), open: true }
    }

    /// One shared token, for a client called `token`.
    pub fn single(token: &Token) -> Self {
        Clients { by_token: vec![(token.digest(), Client::unlimited("token"))], open: false }
    }

    /// Reads a tokens file (see the module's documentation).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = crate::files::read_secret_text(path, "tokens")?;
        let file: File =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("tokens file {}: {}", path.display(), e.message()))?;
        let mut by_token: Vec<([u8; 32], Arc<Client>)> = Vec::new();
        for e in file.clients {
            let at = |what: &str| anyhow::anyhow!("tokens file {}: client '{}': {what}", path.display(), e.name);
            if e.name.is_empty()
                || e.name.len() > 64
                || !e.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            {
                return Err(at("a name is 1 to 64 letters, digits, '-', '_', '.' or '@'"));
            }
            if e.token.chars().count() < MIN_TOKEN_CHARS {
                return Err(at(&format!("its token is shorter than {MIN_TOKEN_CHARS} characters")));
            }
            let upload_per_hour = e
                .upload_per_hour
                .as_deref()
                .map(crate::cli::parse_size)
                .transpose()
                .map_err(|m| at(&format!("upload_per_hour: {m}")))?;
            if e.fps.is_some_and(|f| !(f.is_finite() && f > 0.0)) {
                return Err(at("fps must be a positive number"));
            }
            let digest = Token::new(e.token.clone()).digest();
            if by_token.iter().any(|(d, _)| *d == digest) {
                return Err(at("its token is another client's too"));
            }
            if by_token.iter().any(|(_, c)| c.name == e.name) {
                return Err(at("the name appears twice"));
            }
            let limits = Limits { jobs: e.jobs, upload_per_hour, fps: e.fps };
            by_token.push((digest, Arc::new(Client { name: e.name, role: e.role, limits })));
        }
        if by_token.is_empty() {
            bail!("tokens file {}: no [[client]] in it", path.display());
        }
        Ok(Clients { by_token, open: false })
    }

    /// Whether a client must present a token.
    pub fn requires_token(&self) -> bool {
        !self.open
    }

    /// The client `presented` identifies, if any; every entry is compared, in constant time.
    pub fn identify(&self, presented: Option<&Token>) -> Option<Arc<Client>> {
        if self.open {
            return Some(Client::unlimited("anonymous"));
        }
        use subtle::ConstantTimeEq as _;
        let digest = presented?.digest();
        let mut found = None;
        for (d, client) in &self.by_token {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(client.clone());
            }
        }
        found
    }

    /// The client called `name`, for its current limits (a job outlives a reload).
    pub fn by_name(&self, name: &str) -> Option<Arc<Client>> {
        self.by_token.iter().find(|(_, c)| c.name == name).map(|(_, c)| c.clone())
    }
}

/// An upload counted against its client's hourly limit.
struct Upload {
    at: Instant,
    bytes: u64,
    /// Which [`UploadCharge`] it is.
    charge: u64,
}

/// Where the clients come from, and the current set: replaced whole on a reload.
pub struct Registry {
    file: Option<PathBuf>,
    current: RwLock<Arc<Clients>>,
    /// Each limited client's uploads of the last hour, oldest first.
    uploads: Mutex<HashMap<String, VecDeque<Upload>>>,
    /// The number of the next charge.
    charges: AtomicU64,
    paces: Mutex<HashMap<String, Arc<Pace>>>,
}

impl Registry {
    /// A registry of `clients`, read again from `file` on [`Registry::reload`].
    pub fn new(clients: Clients, file: Option<PathBuf>) -> Self {
        Registry {
            file,
            current: RwLock::new(Arc::new(clients)),
            uploads: Mutex::new(HashMap::new()),
            charges: AtomicU64::new(1),
            paces: Mutex::new(HashMap::new()),
        }
    }

    /// The clients now.
    pub fn clients(&self) -> Arc<Clients> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the tokens file again; a file that does not read keeps the clients as they were.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let Some(file) = &self.file else { return Ok(0) };
        let clients = Clients::load(file)?;
        let n = clients.by_token.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(clients);
        Ok(n)
    }

    /// Charges an upload of `bytes` to `client`'s hourly limit, or says when it would fit. The
    /// charge is settled when dropped: to what [`UploadCharge::arrived`] says came in.
    pub fn take_upload(&self, client: &Client, bytes: u64) -> Result<UploadCharge<'_>, RateLimited> {
        let untracked = UploadCharge { registry: self, client: String::new(), id: 0, arrived: 0 };
        let Some(limit) = client.limits.upload_per_hour else { return Ok(untracked) };
        let now = Instant::now();
        let mut all = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let past = all.entry(client.name.clone()).or_default();
        while past.front().is_some_and(|u| now.duration_since(u.at) >= HOUR) {
            past.pop_front();
        }
        let used: u64 = past.iter().map(|u| u.bytes).sum();
        if bytes > limit {
            return Err(RateLimited {
                message: format!("{} may upload {limit} bytes an hour; this upload is {bytes}", client.name),
                retry_after: None,
            });
        }
        if used + bytes > limit {
            // When enough of the oldest uploads are an hour old.
            let mut freed = 0;
            let mut at = now;
            for u in past.iter() {
                freed += u.bytes;
                at = u.at + HOUR;
                if used - freed + bytes <= limit {
                    break;
                }
            }
            let retry_after = at.saturating_duration_since(now).max(Duration::from_secs(1));
            return Err(RateLimited {
                message: format!("{} has uploaded {used} of its {limit} bytes this hour", client.name),
                retry_after: Some(retry_after),
            });
        }
        let id = self.charges.fetch_add(1, Ordering::Relaxed);
        past.push_back(Upload { at: now, bytes, charge: id });
        Ok(UploadCharge { client: client.name.clone(), id, ..untracked })
    }

    /// Lowers charge `id` of `client` to the `arrived` bytes, if that is less.
    fn settle(&self, client: &str, id: u64, arrived: u64) {
        let mut all = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(upload) = all.get_mut(client).and_then(|past| past.iter_mut().find(|u| u.charge == id)) {
            upload.bytes = upload.bytes.min(arrived);
        }
    }

    /// The pace `client`'s frames are held to, shared by all its jobs; `None` if unlimited.
    pub fn pace(&self, name: &str) -> Option<Arc<Pace>> {
        let clients = self.clients();
        let fps = clients.by_name(name)?.limits.fps?;
        let mut paces = self.paces.lock().unwrap_or_else(|p| p.into_inner());
        let pace = paces.entry(name.to_string()).or_insert_with(|| Arc::new(Pace::new(fps)));
        pace.set_rate(fps);
        Some(pace.clone())
    }
}

/// An upload charged to its client's hourly limit. Dropped, it keeps only the bytes that
/// [`arrived`](UploadCharge::arrived): an upload cut off, or refused before it began, costs
/// what crossed the wire, not what was declared (none, until told otherwise).
pub struct UploadCharge<'a> {
    registry: &'a Registry,
    client: String,
    /// 0 for a client without an upload limit: nothing to settle.
    id: u64,
    arrived: u64,
}

impl std::fmt::Debug for UploadCharge<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadCharge").field("client", &self.client).field("arrived", &self.arrived).finish()
    }
}

impl UploadCharge<'_> {
    /// Says that `bytes` of the upload came in.
    pub fn arrived(&mut self, bytes: u64) {
        self.arrived = bytes;
    }
}

impl Drop for UploadCharge<'_> {
    fn drop(&mut self) {
        if self.id != 0 {
            self.registry.settle(&self.client, self.id, self.arrived);
        }
    }
}

/// A limit a client is over, and when to try again (`None`: never, as it stands).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimited {
    /// What limit, in words.
    pub message: String,
    /// When the same request would pass.
    pub retry_after: Option<Duration>,
}

/// A frames-per-second limit shared by a client's jobs: each frame takes a slot `1/fps` after
/// the last one handed out (a token bucket one frame deep, so no burst runs ahead).
#[derive(Debug)]
pub struct Pace {
    state: Mutex<(f64, Instant)>,
}

impl Pace {
    fn new(fps: f64) -> Self {
        Pace { state: Mutex::new((fps, Instant::now())) }
    }

    fn set_rate(&self, fps: f64) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = fps;
    }

    /// How long the caller must wait before its next frame; the slot is taken.
    pub fn next_slot(&self) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let slot = s.1.max(now);
        s.1 = slot + Duration::from_secs_f64(1.0 / s.0);
        slot - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> anyhow::Result<Clients> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, text).unwrap();
        Clients::load(&path)
    }

    const TWO: &str = "[[client]]\nname = \"alice\"\ntoken = \"alice-0123456789abcdef\"\njobs = 1\nupload_per_hour = \"1K\"\nfps = 10\n\n[[client]]\nname = \"board\"\ntoken = \"board-0123456789abcdef\"\nrole = \"read\"\n";

    #[test]
    fn tokens_identify_their_clients_and_nothing_else() {
        let c = file(TWO).unwrap();
        let alice = c.identify(Some(&Token::new("alice-0123456789abcdef"))).unwrap();
        assert_eq!(
            (alice.name.as_str(), alice.role, alice.limits.jobs.map(|n| n.get())),
            ("alice", Role::Submit, Some(1))
        );
        assert_eq!(alice.limits.upload_per_hour, Some(1024));
        assert_eq!(c.identify(Some(&Token::new("board-0123456789abcdef"))).unwrap().role, Role::Read);
        assert!(c.identify(Some(&Token::new("alice-0123456789abcdeF"))).is_none());
        assert!(c.identify(Some(&Token::new("alice"))).is_none());
        assert!(c.identify(None).is_none());
        assert_eq!(Clients::open().identify(None).unwrap().name, "anonymous");
    }

    #[test]
    fn a_bad_tokens_file_is_refused_with_its_reason() {
        for (text, reason) in [
            ("[[client]]\nname = \"a\"\ntoken = \"short\"\n", "shorter than 16"),
            ("[[client]]\nname = \"a b\"\ntoken = \"0123456789abcdefg\"\n", "a name is"),
            (
                "[[client]]\nname = \"a\"\ntoken = \"0123456789abcdefg\"\n[[client]]\nname = \"b\"\ntoken = \"0123456789abcdefg\"\n",
                "another client's",
            ),
            ("[[client]]\nname = \"a\"\ntoken = \"0123456789abcdefg\"\nrole = \"admin\"\n", "unknown variant"),
            ("[[client]]\nname = \"a\"\ntoken = \"0123456789abcdefg\"\nfps = -1\n", "fps must be"),
            ("", "no [[client]]"),
        ] {
            let err = file(text).unwrap_err().to_string();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
    }

    #[test]
    fn uploads_over_the_hourly_limit_are_refused_with_when_to_retry() {
        let registry = Registry::new(file(TWO).unwrap(), None);
        let alice = registry.clients().by_name("alice").unwrap();
        registry.take_upload(&alice, 600).unwrap().arrived(600);
        let over = registry.take_upload(&alice, 600).unwrap_err();
        let retry = over.retry_after.unwrap();
        assert!(retry > Duration::from_secs(3590) && retry <= HOUR, "{retry:?}");
        registry.take_upload(&alice, 400).expect("what fits still passes").arrived(400);
        assert_eq!(registry.take_upload(&alice, 2000).unwrap_err().retry_after, None, "never fits");
        assert!(registry.take_upload(&alice, 100).is_err(), "1000 of 1024 are spent");
    }

    #[test]
    fn an_upload_cut_off_costs_only_what_arrived() {
        let registry = Registry::new(file(TWO).unwrap(), None);
        let alice = registry.clients().by_name("alice").unwrap();
        {
            let mut charge = registry.take_upload(&alice, 1000).unwrap();
            assert!(registry.take_upload(&alice, 100).is_err(), "charged in full while it runs");
            charge.arrived(300);
        }
        registry.take_upload(&alice, 700).expect("the 700 that never came are given back").arrived(700);
        assert!(registry.take_upload(&alice, 100).is_err(), "300 + 700 of 1024 are spent");
        // Refused before a byte came: free.
        let registry = Registry::new(file(TWO).unwrap(), None);
        drop(registry.take_upload(&alice, 1000).unwrap());
        registry.take_upload(&alice, 1000).expect("nothing arrived, nothing charged").arrived(1000);
    }

    #[test]
    fn a_reload_that_fails_keeps_the_clients_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, TWO).unwrap();
        let registry = Registry::new(Clients::load(&path).unwrap(), Some(path.clone()));
        std::fs::write(&path, "[[client]]\nname = \"x\"\ntoken = \"short\"\n").unwrap();
        assert!(registry.reload().is_err());
        assert!(registry.clients().identify(Some(&Token::new("alice-0123456789abcdef"))).is_some());
        std::fs::write(&path, TWO.replace("alice", "alicia")).unwrap();
        assert_eq!(registry.reload().unwrap(), 2);
        assert!(registry.clients().identify(Some(&Token::new("alice-0123456789abcdef"))).is_none());
        assert!(registry.clients().by_name("alicia").is_some());
    }

    #[test]
    fn a_pace_hands_out_slots_one_frame_apart() {
        let pace = Pace::new(100.0);
        let waits: Vec<Duration> = (0..5).map(|_| pace.next_slot()).collect();
        assert!(waits[0] < Duration::from_millis(5));
        assert!(waits[4] >= Duration::from_millis(35) && waits[4] <= Duration::from_millis(41), "{waits:?}");
    }
}
