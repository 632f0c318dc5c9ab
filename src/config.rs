//! Configuration: command line over environment over file over defaults, validated into the
//! config each role runs with. Clap types stop here.
//!
//! The file is TOML with one section per role (see `config/vpd.example.toml`); environment
//! variables are read by clap (`env = ...` in [`crate::cli`]).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use clap::CommandFactory;
use clap::error::ErrorKind;

use crate::broker::{DEFAULT_NAMESPACE, Topology};
use crate::cli::{
    Cli, ClientArgs, ClientSettings, FilterSettings, JobsAction, JobsArgs, OutputSettings, PreviewArgs,
    PreviewSettings, ResultArgs, RunArgs, RunSettings, ServerArgs, ServerSettings, TlsClientArgs, WorkerArgs,
    WorkerSettings,
};
use crate::client::{ClientConfig, ClientJob, JobsConfig, JobsQuery};
use crate::filters::presets::Presets;
use crate::filters::{Chain, FilterEnv};
use crate::media::OutputOptions;
use crate::net::ServerAddr;
use crate::preview::PreviewConfig;
use crate::protocol::message::Token;
use crate::protocol::wire::TransportEncoding;
use crate::server::{Backend, ServerConfig};
use crate::worker::WorkerConfig;

/// The configuration file, as written: one section per role, whose keys are the role's flags
/// (`--max-upload` is `max_upload`), read into the same types as the command line
/// ([`crate::cli`]'s `*Settings`), so that a flag and its key are one definition.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Settings for every role that runs filters.
    #[serde(default)]
    pub filters: Section<FilterSettings>,
    /// Defaults for `vpd run`.
    #[serde(default)]
    pub run: Section<RunSettings>,
    /// Defaults for `vpd server`.
    #[serde(default)]
    pub server: Section<ServerSettings>,
    /// Defaults for `vpd worker`.
    #[serde(default)]
    pub worker: Section<WorkerSettings>,
    /// Defaults for `vpd client` (and, for the keys it has, `vpd jobs`).
    #[serde(default)]
    pub client: Section<ClientSettings>,
    /// Defaults for `vpd preview`.
    #[serde(default)]
    pub preview: Section<PreviewSettings>,
    /// Named filter chains for `--preset`, besides (or instead of) the built-in ones.
    #[serde(default)]
    pub presets: std::collections::BTreeMap<String, String>,
}

/// A section of the configuration file: a role's settings. A key that no flag has is an error;
/// the old names of renamed keys still read.
#[derive(Debug, Default)]
pub struct Section<T>(pub T);

impl<T> std::ops::Deref for Section<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Keys renamed since they were introduced: the old name, and the one it reads as.
const RENAMED_KEYS: &[(&str, &str)] =
    &[("workers", "threads"), ("concurrency", "threads"), ("preset", "encoder_preset")];

impl<'de, T: Serialize + DeserializeOwned + Default> Deserialize<'de> for Section<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(d)?;
        let known = keys_of(&T::default()).map_err(D::Error::custom)?;
        for (old, new) in RENAMED_KEYS {
            if known.contains(*new) && !known.contains(*old) {
                if let Some(value) = table.remove(*old) {
                    if table.contains_key(*new) {
                        return Err(D::Error::custom(format!("give `{new}` or its old name `{old}`, not both")));
                    }
                    table.insert(new.to_string(), value);
                }
            }
        }
        if let Some(key) = table.keys().find(|k| !known.contains(k.as_str())) {
            return Err(D::Error::custom(format!("unknown key `{key}`")));
        }
        // One key at a time first: an error names its key.
        for (key, value) in &table {
            let one = toml::Table::from_iter([(key.clone(), value.clone())]);
            T::deserialize(toml::Value::Table(one)).map_err(|e| D::Error::custom(format!("`{key}`: {e}")))?;
        }
        T::deserialize(toml::Value::Table(table)).map(Section).map_err(D::Error::custom)
    }
}

/// The keys `value` serialises with: every field's, flattened groups' included.
fn keys_of<T: Serialize>(value: &T) -> Result<std::collections::BTreeSet<String>, String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => Ok(map.keys().cloned().collect()),
        Ok(_) => Err("a section must be a table".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// `given` (the command line and the environment, as clap read them) over `file` (the same
/// settings from the configuration file): every value given wins, every other is the file's.
/// The one merge of every role; defaults come after, where each setting is used.
fn layered<T: Serialize + DeserializeOwned>(given: T, file: &T) -> anyhow::Result<T> {
    let mut merged = serde_json::to_value(file)?;
    let given = serde_json::to_value(given)?;
    if let (Some(merged), serde_json::Value::Object(given)) = (merged.as_object_mut(), given) {
        for (key, value) in given {
            // A switch off and a value absent are both "not given".
            if !(value.is_null() || value == serde_json::Value::Bool(false)) {
                merged.insert(key, value);
            }
        }
    }
    Ok(serde_json::from_value(merged)?)
}

/// The settings `to` has of `from` (`vpd jobs` reads the `[client]` section's keys it has).
fn project<F: Serialize, T: DeserializeOwned>(from: &F) -> anyhow::Result<T> {
    Ok(serde_json::from_value(serde_json::to_value(from)?)?)
}

/// How long `vpd client` waits out a busy server unless told, in seconds.
const DEFAULT_CLIENT_WAIT_S: u64 = 300;
/// How long `vpd jobs` waits out a busy server unless told, in seconds.
const DEFAULT_JOBS_WAIT_S: u64 = 60;

impl OutputSettings {
    /// The output options these settings and `format` (the container, when the output's
    /// extension does not say) make, validated: what the encoder trusts.
    pub fn options(self, format: Option<String>) -> anyhow::Result<OutputOptions> {
        Ok(OutputOptions {
            codec: self.codec.unwrap_or_default(),
            crf: self.crf,
            preset: self.encoder_preset,
            bitrate: self.bitrate,
            keyint: self.keyint.map(|k| bounded("--keyint", k, MAX_KEYINT as usize)).transpose()?,
            pix_fmt: self.pix_fmt,
            format,
        })
    }
}

impl FileConfig {
    /// Reads `path`, or returns the defaults when there is no file.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), one_line(&text, &e)))
    }

    /// The validated configuration of `vpd run`: one job, or a batch of them (several inputs,
    /// or an output that is a directory).
    pub fn run(&self, mut args: RunArgs) -> anyhow::Result<RunPlan> {
        let dir_output = args.output.is_dir() || args.output.to_string_lossy().ends_with('/');
        if args.input.len() > 1 && (args.live || args.input.iter().any(|i| crate::media::live::is_live_input(i))) {
            return Err(usage(
                ErrorKind::ArgumentConflict,
                "a live input runs alone: it never ends on its own, so the inputs after it would never start",
            ));
        }
        if args.input.len() == 1 && !dir_output {
            let input = args.input.remove(0);
            return Ok(RunPlan::One(Box::new(self.run_one(args, input)?)));
        }
        if !args.output.is_dir() {
            return Err(usage(
                ErrorKind::ValueValidation,
                &format!("a batch writes into a directory: {} is not one (create it first)", args.output.display()),
            ));
        }
        if args.resume {
            return Err(usage(
                ErrorKind::ArgumentConflict,
                "--resume is for one input; a batch skips complete outputs",
            ));
        }
        let inputs = std::mem::take(&mut args.input);
        let dir = args.output.clone();
        let mut jobs: Vec<RunConfig> = Vec::new();
        for input in inputs {
            if input == Path::new(crate::media::STDIO) {
                return Err(usage(ErrorKind::ValueValidation, "a batch reads files, not standard input"));
            }
            let output = dir.join(batch_output_name(&input, args.result.format.as_deref()));
            if let Some(other) = jobs.iter().find(|j| j.output == output) {
                return Err(usage(
                    ErrorKind::ValueValidation,
                    &format!("{} and {} would both write {}", other.input.display(), input.display(), output.display()),
                ));
            }
            let one = RunArgs { output, ..args.clone() };
            jobs.push(self.run_one(one, input)?);
        }
        Ok(RunPlan::Batch(jobs))
    }

    /// One `vpd run` job of `input`.
    fn run_one(&self, args: RunArgs, input: PathBuf) -> anyhow::Result<RunConfig> {
        let s = layered(args.settings, &self.run)?;
        let live = args.live || crate::media::live::is_live_input(&input);
        let record = match args.record_on {
            None => None,
            Some(_) if !live => {
                return Err(usage(
                    ErrorKind::ArgumentConflict,
                    "--record-on is for a live input: a network URL, a /dev/video device, or --live",
                ));
            }
            Some(_)
                if args.output == Path::new(crate::media::STDIO)
                    || crate::media::is_stream_target(&args.output)
                    || args.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("m3u8")) =>
            {
                return Err(usage(
                    ErrorKind::ValueValidation,
                    "--record-on writes clip files: -o names them, with strftime fields (cam-%Y%m%d-%H%M%S.mp4)",
                ));
            }
            Some(on) => Some(RecordConfig {
                on,
                pre_roll: seconds("--pre-roll", s.pre_roll, 2.0, 0.0..=60.0)?,
                post_roll: seconds("--post-roll", s.post_roll, 5.0, 0.0..=600.0)?,
                state_dir: s.state_dir.clone().unwrap_or_else(|| clips_dir(&args.output)),
            }),
        };
        Ok(RunConfig {
            input,
            output: args.output,
            chain: self.chain(args.filter, args.preset.as_deref())?,
            threads: bounded("--threads", s.threads.unwrap_or_else(default_threads), MAX_THREADS)?,
            output_options: s.encoding.options(args.result.format)?,
            window: s.window.map(|w| bounded("--window", w, MAX_WINDOW)).transpose()?,
            filter_env: self.filter_env(args.filters)?,
            resume: args.resume,
            segment_seconds: segment_seconds(s.segment_seconds)?,
            quiet: args.result.quiet,
            json: args.result.json,
            live,
            record,
            max_latency: max_latency(s.max_latency)?,
            tiles: s.tiles.unwrap_or_default(),
        })
    }

    /// The validated configuration of `vpd server`.
    pub fn server(&self, a: ServerArgs) -> anyhow::Result<ServerConfig> {
        let s = layered(a.settings, &self.server)?;
        let unix = s.unix;
        let listen = s.listen.or_else(|| unix.is_none().then(|| "[::]:9000".parse().expect("a valid address")));
        let redispatch = s.redispatch_after.unwrap_or(60.0);
        if !(redispatch.is_finite() && (0.1..=86_400.0).contains(&redispatch)) {
            return Err(usage(ErrorKind::ValueValidation, "--redispatch-after must be between 0.1 and 86400 seconds"));
        }
        let backend = match s.amqp {
            Some(url) => Backend::Amqp {
                url,
                topology: Topology::new(namespace(s.namespace)?)
                    .with_key(cluster_key(s.cluster_key_file)?)
                    .with_queue_type(s.queue_type.unwrap_or_default()),
                redispatch_after: Duration::from_secs_f64(redispatch),
            },
            None => Backend::Local {
                threads: bounded("--threads", s.threads.unwrap_or_else(default_threads), MAX_THREADS)?,
                filter_env: self.filter_env(a.filters)?,
            },
        };
        let clients = match (&s.tokens_file, token(a.token, s.token_file.as_deref())?) {
            (Some(file), None) => crate::server::clients::Clients::load(file)?,
            (None, Some(t)) => crate::server::clients::Clients::single(&t),
            (None, None) => crate::server::clients::Clients::open(),
            (Some(_), Some(_)) => {
                return Err(usage(ErrorKind::ArgumentConflict, "give a token or a tokens file, not both"));
            }
        };
        Ok(ServerConfig {
            listen,
            unix,
            backend,
            clients,
            tokens_file: s.tokens_file,
            max_upload: s.max_upload.unwrap_or(4 << 30),
            max_jobs: bounded("--max-jobs", s.max_jobs.unwrap_or(NonZeroUsize::new(2).expect("2 > 0")), MAX_JOBS)?,
            work_dir: s
                .work_dir
                .unwrap_or_else(|| std::env::temp_dir().join(format!("vpd-server-{}", std::process::id()))),
            state_dir: s.state_dir.map_or_else(default_state_dir, Ok)?,
            segment_seconds: segment_seconds(s.segment_seconds)?,
            split: s.split.unwrap_or_default(),
            max_message: match s.max_message {
                None => crate::split::DEFAULT_MAX_MESSAGE,
                Some(n) if (64 << 10..=crate::protocol::segment::MAX_TASK_BYTES).contains(&n) => n,
                Some(_) => {
                    return Err(usage(ErrorKind::ValueValidation, "--max-message must be between 65536 and 134217728"));
                }
            },
            tiles: s.tiles.unwrap_or_default(),
            keep_results: s.keep_results.unwrap_or(DEFAULT_KEEP_RESULTS),
            max_stored: s.max_stored.unwrap_or(DEFAULT_MAX_STORED),
            window: s.window.map(|w| bounded("--window", w, MAX_WINDOW)).transpose()?,
            preview: s.preview,
            web_open: s.web_open,
            presets: self.presets()?,
            metrics: s.metrics,
            tls: server_tls(s.tls_cert, s.tls_key)?,
        })
    }

    /// The validated configuration of `vpd worker`.
    pub fn worker(&self, a: WorkerArgs) -> anyhow::Result<WorkerConfig> {
        let s = layered(a.settings, &self.worker)?;
        let Some(amqp_url) = s.amqp else {
            return Err(usage(
                ErrorKind::MissingRequiredArgument,
                "a worker needs RabbitMQ: pass --amqp URL or set VPD_AMQP_URL",
            ));
        };
        Ok(WorkerConfig {
            amqp_url,
            threads: bounded("--threads", s.threads.unwrap_or_else(default_threads), MAX_THREADS)?,
            topology: Topology::new(namespace(s.namespace)?)
                .with_key(cluster_key(s.cluster_key_file)?)
                .with_queue_type(s.queue_type.unwrap_or_default()),
            filter_env: self.filter_env(a.filters)?,
            id: a
                .name
                .map_or_else(crate::metrics::WorkerId::this_process, |n| crate::metrics::WorkerId::on_this_host(&n))
                .to_string(),
            metrics: s.metrics,
            max_frame_pixels: s.max_frame_pixels.unwrap_or(DEFAULT_MAX_FRAME_PIXELS),
        })
    }

    /// The validated configuration of `vpd preview`, and its address.
    pub fn preview(&self, a: PreviewArgs) -> anyhow::Result<(PreviewConfig, SocketAddr)> {
        let s = layered(a.settings, &self.preview)?;
        let Some(amqp_url) = s.amqp else {
            return Err(usage(
                ErrorKind::MissingRequiredArgument,
                "a preview reads job events from RabbitMQ: pass --amqp URL or set VPD_AMQP_URL \
                 (or run `vpd server --preview ADDR` for a server's own jobs)",
            ));
        };
        let topology = Topology::new(namespace(s.namespace)?)
            .with_key(cluster_key(s.cluster_key_file)?)
            .with_queue_type(s.queue_type.unwrap_or_default());
        let listen = s.listen.unwrap_or_else(|| "[::]:8080".parse().expect("a valid address"));
        let token = token(a.token, s.token_file.as_deref())?;
        let tls = server_tls(s.tls_cert, s.tls_key)?;
        Ok((PreviewConfig { amqp_url, topology, state_dir: s.state_dir, token, tls }, listen))
    }

    /// The validated configuration of `vpd client`, and whether to print JSON.
    pub fn client(&self, mut a: ClientArgs) -> anyhow::Result<(ClientPlan, bool)> {
        let json = a.result.json;
        let live = a.live || a.input.iter().any(|i| crate::media::live::is_live_input(i));
        if live && a.input.len() > 1 {
            return Err(usage(
                ErrorKind::ArgumentConflict,
                "a live input runs alone: it never ends on its own, so the inputs after it would never start",
            ));
        }
        if live && a.detach {
            return Err(usage(
                ErrorKind::ArgumentConflict,
                "--detach is for an upload: a live stream goes through its client as long as it runs",
            ));
        }
        let batch = a.input.len() > 1 || (a.attach.is_none() && a.output.as_deref().is_some_and(Path::is_dir));
        if !batch {
            let input = a.input.pop();
            return Ok((ClientPlan::One(Box::new(self.client_one(a, input)?)), json));
        }
        if a.detach {
            return Err(usage(ErrorKind::ArgumentConflict, "--detach is for one input"));
        }
        let Some(dir) = a.output.clone().filter(|d| d.is_dir()) else {
            let named =
                a.output.as_deref().map_or("no -o".into(), |d| format!("{} is not one (create it first)", d.display()));
            return Err(usage(ErrorKind::ValueValidation, &format!("a batch writes into a directory: {named}")));
        };
        let at_once = bounded("--jobs", a.jobs, MAX_BATCH_AT_ONCE)?;
        let mut jobs: Vec<ClientConfig> = Vec::new();
        for input in std::mem::take(&mut a.input) {
            let output = dir.join(batch_output_name(&input, a.result.format.as_deref()));
            if let Some(other) = jobs.iter().find(|j| j.output == output) {
                return Err(usage(
                    ErrorKind::ValueValidation,
                    &format!("{} and {input:?} would both write {}", other.output.display(), output.display()),
                ));
            }
            // Several at once: a line per file as it ends, no progress bars over each other.
            let one = ClientArgs {
                output: Some(output),
                result: ResultArgs { quiet: true, ..a.result.clone() },
                ..a.clone()
            };
            jobs.push(self.client_one(one, Some(input))?);
        }
        Ok((ClientPlan::Batch(jobs, at_once), json))
    }

    /// One `vpd client` job: of `input`, or the job it attaches to.
    fn client_one(&self, a: ClientArgs, input: Option<PathBuf>) -> anyhow::Result<ClientConfig> {
        let s = layered(a.settings, &self.client)?;
        let job = match (a.attach, input, a.filter) {
            (Some(id), _, _) => ClientJob::Attach(id),
            (None, Some(input), filter) if filter.is_some() || a.preset.is_some() => {
                let live = a.live || crate::media::live::is_live_input(&input);
                ClientJob::Submit {
                    chain: self.chain(filter, a.preset.as_deref())?,
                    detach: a.detach,
                    live: live.then(|| max_latency(s.max_latency)).transpose()?,
                    input,
                }
            }
            _ => return Err(usage(ErrorKind::MissingRequiredArgument, "give an input and --filter, or --attach JOB")),
        };
        Ok(ClientConfig {
            job,
            // Detached without -o: the result is fetched later; the server's container is MP4.
            output: a.output.unwrap_or_default(),
            wait: Duration::from_secs(s.wait.unwrap_or(DEFAULT_CLIENT_WAIT_S)),
            server: s.server.unwrap_or_else(default_server),
            output_options: s.encoding.options(a.result.format)?,
            transport: s.transport.unwrap_or(TransportEncoding::Auto),
            split: s.split.unwrap_or_default(),
            token: token(a.token, s.token_file.as_deref())?,
            tls: client_tls(s.tls)?,
            quiet: a.result.quiet,
        })
    }

    /// The validated configuration of `vpd jobs`.
    pub fn jobs(&self, a: JobsArgs) -> anyhow::Result<JobsConfig> {
        let s = layered(a.settings, &project(&*self.client)?)?;
        let query = match a.action {
            Some(JobsAction::Show(job)) => JobsQuery::Show(job),
            Some(JobsAction::Control { control, .. }) if a.state_dir.is_some() => {
                let text =
                    format!("--state-dir reads a job store; `{}` needs the server that runs the job", control.as_str());
                return Err(usage(ErrorKind::ArgumentConflict, &text));
            }
            Some(JobsAction::Control { job, control, output }) => JobsQuery::Control(job, control, output),
            None => JobsQuery::List(a.limit),
        };
        Ok(JobsConfig {
            store: a.state_dir,
            server: s.server.unwrap_or_else(default_server),
            token: token(a.token, s.token_file.as_deref())?,
            tls: client_tls(s.tls)?,
            query,
            json: a.json,
            wait: Duration::from_secs(s.wait.unwrap_or(DEFAULT_JOBS_WAIT_S)),
        })
    }

    /// The presets: the built-in ones and the file's.
    pub fn presets(&self) -> anyhow::Result<Presets> {
        Presets::new(&self.presets).map_err(|e| anyhow::anyhow!("config file: {e}"))
    }

    /// The chain given, or the preset named, resolved now: jobs record the chain itself.
    fn chain(&self, filter: Option<Chain>, preset: Option<&str>) -> anyhow::Result<Chain> {
        match (filter, preset) {
            (Some(chain), _) => Ok(chain),
            (None, Some(name)) => {
                self.presets()?.resolve(name).map_err(|e| usage(ErrorKind::InvalidValue, &e.to_string()))
            }
            (None, None) => Err(usage(ErrorKind::MissingRequiredArgument, "give --filter CHAIN or --preset NAME")),
        }
    }

    /// What the filters need on this host: the command line's, over `[filters]`, over the defaults.
    fn filter_env(&self, given: FilterSettings) -> anyhow::Result<FilterEnv> {
        let s = layered(given, &self.filters)?;
        Ok(s.face_cascade.map_or_else(FilterEnv::default, |face_cascade| FilterEnv { face_cascade }))
    }
}

/// A TOML error in one line: where (the table, for an error in a section; else the line) and
/// what.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else { return message };
    let at = text.get(span.clone()).unwrap_or_default();
    if at.starts_with('[') && !at.contains('\n') {
        return format!("{at} {message}");
    }
    let line = text.get(..span.start).unwrap_or(text).matches('\n').count() + 1;
    format!("line {line}: {message}")
}

/// The server a client talks to unless told: this host's port 9000.
fn default_server() -> ServerAddr {
    ServerAddr::Tcp("127.0.0.1:9000".into())
}

/// How a client speaks TLS, if it does.
fn client_tls(s: TlsClientArgs) -> anyhow::Result<Option<crate::tls::ClientTls>> {
    use crate::tls::{ClientTls, Trust};
    let trust = match (s.tls_fingerprint, s.tls_ca) {
        (Some(f), None) => Trust::Pin(f),
        (None, Some(ca)) => Trust::Ca(ca),
        (Some(_), Some(_)) => {
            return Err(usage(ErrorKind::ArgumentConflict, "give --tls-ca or --tls-fingerprint, not both"));
        }
        (None, None) if s.tls => Trust::System,
        (None, None) => return Ok(None),
    };
    Ok(Some(ClientTls::new(&trust)?))
}

/// A usage error, printed by clap (with its exit status 2).
/// Filter threads, at most (`--threads`).
const MAX_THREADS: usize = 1024;
/// Frames in flight, at most (`--window`): past it the memory is not worth the frames.
const MAX_WINDOW: usize = 4096;
/// Jobs at once on a server, at most (`--max-jobs`).
const MAX_JOBS: usize = 1024;
/// A batch's jobs submitted at once, at most (`vpd client --jobs`).
const MAX_BATCH_AT_ONCE: usize = 256;
/// Frames between key frames, at most (`--keyint`).
const MAX_KEYINT: u32 = 100_000;

/// `value`, or a usage error naming `flag` and its range (1 to `most`).
fn bounded<T>(flag: &str, value: T, most: usize) -> anyhow::Result<T>
where
    T: Copy + Into<Countable>,
{
    let n = value.into().0;
    if n == 0 || n > most as u64 {
        return Err(usage(ErrorKind::ValueValidation, &format!("{flag} must be between 1 and {most} (got {n})")));
    }
    Ok(value)
}

/// A count option's value, for [`bounded`].
struct Countable(u64);

impl From<NonZeroUsize> for Countable {
    fn from(n: NonZeroUsize) -> Self {
        Countable(n.get() as u64)
    }
}

impl From<u32> for Countable {
    fn from(n: u32) -> Self {
        Countable(u64::from(n))
    }
}

fn usage(kind: ErrorKind, message: &str) -> anyhow::Error {
    anyhow::Error::new(Cli::command().error(kind, message))
}

/// A listener's TLS, from its certificate and key files, when both are named.
fn server_tls(cert: Option<PathBuf>, key: Option<PathBuf>) -> anyhow::Result<Option<crate::tls::ServerTls>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::ServerTls::load(&cert, &key)?)),
        (None, None) => Ok(None),
        _ => Err(usage(
            ErrorKind::MissingRequiredArgument,
            "TLS needs both a certificate and its key (--tls-cert and --tls-key)",
        )),
    }
}

/// The cluster's key, from its file, when one is named.
fn cluster_key(file: Option<PathBuf>) -> anyhow::Result<Option<crate::broker::ClusterKey>> {
    file.map(|path| crate::broker::ClusterKey::load(&path)).transpose()
}

/// Queue names are built from the namespace: keep it to what RabbitMQ and shells take well.
fn namespace(ns: Option<String>) -> anyhow::Result<String> {
    let ns = ns.unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    if ns.is_empty() || ns.len() > 100 || !ns.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(usage(
            ErrorKind::ValueValidation,
            &format!("namespace '{ns}': use 1-100 letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(ns)
}

/// The token: given, or read from a file (its first line). A file other users can read is
/// reported: a secret belongs to the service's user alone.
fn token(t: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<Token>> {
    let t = match (t, file) {
        (Some(t), _) => Some(t),
        (None, Some(path)) => {
            let text = crate::files::read_secret_text(path, "token")?;
            Some(text.lines().next().unwrap_or_default().trim().to_string())
        }
        (None, None) => None,
    };
    match t {
        Some(t) if t.is_empty() => Err(usage(ErrorKind::ValueValidation, "the token is empty")),
        t => Ok(t.map(Token::new)),
    }
}

/// Where a server keeps its job store by default: systemd's `StateDirectory=` (as
/// `$STATE_DIRECTORY`, `/var/lib/vpd` for the packaged unit), else the XDG state directory of
/// the user (`$XDG_STATE_HOME/vpd`, `~/.local/state/vpd`).
fn default_state_dir() -> anyhow::Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dirs) = std::env::var_os("STATE_DIRECTORY").filter(|v| !v.is_empty()) {
        // systemd lists one path per StateDirectory= entry, colon-separated.
        let first = dirs.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return Ok(PathBuf::from(first));
    }
    if let Some(xdg) = var("XDG_STATE_HOME").filter(|p| p.is_absolute()) {
        return Ok(xdg.join("vpd"));
    }
    match var("HOME") {
        Some(home) => Ok(home.join(".local/state/vpd")),
        None => {
            Err(usage(ErrorKind::MissingRequiredArgument, "no home directory for the job store: pass --state-dir DIR"))
        }
    }
}

/// One filter thread per CPU core.
fn default_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Everything `vpd run` needs, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The video to read.
    pub input: PathBuf,
    /// Where the result goes.
    pub output: PathBuf,
    /// The filters.
    pub chain: Chain,
    /// Filter threads.
    pub threads: NonZeroUsize,
    /// How the output is encoded.
    pub output_options: OutputOptions,
    /// Most frames in flight; `None` picks from the worker count and frame size.
    pub window: Option<NonZeroUsize>,
    /// Files the filters need.
    pub filter_env: FilterEnv,
    /// Continue an interrupted run from its committed segments.
    pub resume: bool,
    /// Seconds of video per committed segment.
    pub segment_seconds: f64,
    /// No progress bar or human summary.
    pub quiet: bool,
    /// Summary as JSON on stdout.
    pub json: bool,
    /// Read the input live: as it comes, until Ctrl-C or its end, dropping frames to keep up.
    pub live: bool,
    /// The latency a live job is to stay under; it is warned about when it does not.
    pub max_latency: std::time::Duration,
    /// How frames are cut into tiles (`--tiles`).
    pub tiles: crate::filters::tiles::Tiles,
    /// Clips only while a detector fires (`--record-on`), the output being their name.
    pub record: Option<RecordConfig>,
}

/// What `--record-on` was asked to do.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// The detector.
    pub on: crate::pipeline::trigger::RecordOn,
    /// Kept before the detector first fires.
    pub pre_roll: Duration,
    /// Kept after it last fires.
    pub post_roll: Duration,
    /// Where the job store that records the clips is.
    pub state_dir: PathBuf,
}

/// `flag`'s value in seconds, `default` when not given, within `range`.
fn seconds(
    flag: &str,
    value: Option<f64>,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
) -> anyhow::Result<Duration> {
    let v = value.unwrap_or(default);
    if !(v.is_finite() && range.contains(&v)) {
        return Err(usage(
            ErrorKind::ValueValidation,
            &format!("{flag} {v} is out of range ({} to {} seconds)", range.start(), range.end()),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// The directory of a clip name pattern: its leading components without strftime fields
/// (`clips/%Y-%m-%d/cam-%H%M%S.mp4` → `clips`), `.` when there are none.
fn clips_dir(pattern: &Path) -> PathBuf {
    let parent = pattern.parent().unwrap_or(Path::new(""));
    let fixed: PathBuf = parent.components().take_while(|c| !c.as_os_str().to_string_lossy().contains('%')).collect();
    if fixed.as_os_str().is_empty() { PathBuf::from(".") } else { fixed }
}

/// Default for `--segment-seconds`: a resume redoes at most this much video. Each segment
/// starts with a keyframe, so shorter ones cost size: on a 720p clip, 2 s segments made H.264
/// 9 % larger on edge maps and 35 % on smooth (blurred) frames; 10 s, x264's own keyframe
/// distance at 25 fps, cost nothing measurable (BENCHMARKS.md, "Segments").
pub const DEFAULT_SEGMENT_SECONDS: f64 = 10.0;

/// The largest frame a worker takes unless told otherwise: 4K (3840x2160).
pub const DEFAULT_MAX_FRAME_PIXELS: u64 = 3840 * 2160;

/// What `vpd client` was asked to do.
#[derive(Debug)]
pub enum ClientPlan {
    /// One job.
    One(Box<ClientConfig>),
    /// A batch: its jobs in order, and how many at once.
    Batch(Vec<ClientConfig>, NonZeroUsize),
}

/// What `vpd run` was asked to do.
#[derive(Debug)]
pub enum RunPlan {
    /// One job.
    One(Box<RunConfig>),
    /// A batch: its jobs, in order.
    Batch(Vec<RunConfig>),
}

/// A batch output's name: the input's stem, with the container of `--format` (an FFmpeg
/// format name or an extension) or the input's own extension.
fn batch_output_name(input: &Path, format: Option<&str>) -> String {
    let stem = input.file_stem().map_or_else(|| "output".into(), |s| s.to_string_lossy().into_owned());
    let ext = match format {
        Some("matroska") => "mkv".to_string(),
        Some("mpegts") => "ts".to_string(),
        Some(f) => f.to_string(),
        None => input.extension().map_or_else(|| "mp4".into(), |e| e.to_string_lossy().into_owned()),
    };
    format!("{stem}.{ext}")
}

/// Default for `--keep-results`: a day to attach, fetch or rerun an ended job.
pub const DEFAULT_KEEP_RESULTS: Duration = Duration::from_secs(24 * 3600);

/// Default for `--max-stored`.
pub const DEFAULT_MAX_STORED: u64 = 20 << 30;

/// A segment length from the command line or the config file, checked.
/// `--max-latency`: more than 0, at most 60 s, 1 s when not given.
fn max_latency(seconds: Option<f64>) -> anyhow::Result<Duration> {
    match seconds {
        Some(s) if s.is_finite() && s > 0.0 && s <= 60.0 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(usage(
            ErrorKind::ValueValidation,
            &format!("--max-latency {s} is out of range (more than 0, at most 60 seconds)"),
        )),
        None => Ok(crate::pipeline::live::DEFAULT_MAX_LATENCY),
    }
}

fn segment_seconds(value: Option<f64>) -> anyhow::Result<f64> {
    let seconds = value.unwrap_or(DEFAULT_SEGMENT_SECONDS);
    if !(seconds.is_finite() && (0.1..=3600.0).contains(&seconds)) {
        return Err(usage(ErrorKind::ValueValidation, "--segment-seconds must be between 0.1 and 3600"));
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A one-job run's config.
    trait One {
        fn one(self) -> anyhow::Result<RunConfig>;
    }

    impl One for anyhow::Result<RunPlan> {
        fn one(self) -> anyhow::Result<RunConfig> {
            match self? {
                RunPlan::One(cfg) => Ok(*cfg),
                RunPlan::Batch(_) => anyhow::bail!("a batch"),
            }
        }
    }

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["vpd", "run", "in.mp4", "-o", "out.mp4", "--filter", "edges"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Run(a) => a,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn the_clients_encoding_transport_and_token_file_come_from_the_file_unless_given() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "from-file\n").unwrap();
        let text = format!(
            "[client]\nbitrate = \"2M\"\nkeyint = 50\npix_fmt = \"yuv444p\"\ntransport = \"lz4\"\ntoken_file = {:?}\n",
            token_file.to_str().unwrap()
        );
        let file: FileConfig = toml::from_str(&text).unwrap();
        let args = |extra: &[&str]| {
            let mut argv = vec!["vpd", "client", "in.mp4", "-o", "out.mp4", "-f", "edges"];
            argv.extend_from_slice(extra);
            match crate::cli::Cli::parse_from(argv).command {
                crate::cli::Command::Client(a) => a,
                other => panic!("not client: {other:?}"),
            }
        };
        let one = |plan: (ClientPlan, bool)| match plan.0 {
            ClientPlan::One(cfg) => *cfg,
            ClientPlan::Batch(..) => panic!("a batch"),
        };
        let cfg = one(file.client(args(&[])).unwrap());
        let o = &cfg.output_options;
        assert_eq!((o.bitrate, o.keyint, o.pix_fmt.as_deref()), (Some(2_000_000), Some(50), Some("yuv444p")));
        assert_eq!(cfg.transport, TransportEncoding::Lz4);
        assert!(cfg.token.unwrap().matches(&Token::new("from-file")));
        let cfg = one(file.client(args(&["--keyint", "10", "--transport", "raw", "--token", "given"])).unwrap());
        assert_eq!((cfg.output_options.keyint, cfg.transport), (Some(10), TransportEncoding::Raw));
        assert!(cfg.token.unwrap().matches(&Token::new("given")));
        // A bad value in the file is an error when the file is read, naming its table and key.
        let text = "[run]\nbitrate = \"fast\"";
        let bad = one_line(text, &toml::from_str::<FileConfig>(text).unwrap_err());
        assert_eq!(bad, "[run] `bitrate`: 'fast' is not a bitrate such as 800K or 4M (1K to 10000M)");
        let text = "[server]\nthreads = 2\nmax_jobs = \"two\"";
        let bad = one_line(text, &toml::from_str::<FileConfig>(text).unwrap_err());
        assert!(bad.starts_with("[server] `max_jobs`: "), "{bad}");
        let text = "[client]\ntls = true\n[client]";
        let bad = one_line(text, &toml::from_str::<FileConfig>(text).unwrap_err());
        assert!(bad.starts_with("line 3: ") && !bad.contains('\n'), "{bad}");
    }

    #[test]
    fn a_token_comes_from_its_file_first_line_and_an_empty_or_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret \nsecond line\n").unwrap();
        let t = token(None, Some(&file)).unwrap().unwrap();
        assert!(t.matches(&Token::new("s3cret")));
        assert!(token(Some("given".into()), None).unwrap().unwrap().matches(&Token::new("given")));
        std::fs::write(&file, "\n").unwrap();
        assert!(token(None, Some(&file)).unwrap_err().to_string().contains("the token is empty"));
        let missing = format!("{:#}", token(None, Some(&dir.path().join("nope"))).unwrap_err());
        assert!(missing.contains("cannot read the token file") && missing.contains("nope"), "{missing}");
        assert!(token(None, None).unwrap().is_none());
    }

    #[test]
    fn command_line_beats_file_beats_default() {
        let file: FileConfig =
            toml::from_str("[run]\nthreads = 3\ncodec = \"hevc\"\ncrf = 20\n[filters]\nface_cascade = \"/x.xml\"")
                .unwrap();
        let cfg = file.run(run_args(&[])).one().unwrap();
        assert_eq!(
            (cfg.threads.get(), cfg.output_options.codec.to_string(), cfg.output_options.crf),
            (3, "hevc".into(), Some(20))
        );
        assert_eq!(cfg.filter_env.face_cascade, PathBuf::from("/x.xml"));

        let cfg = file
            .run(run_args(&[
                "--threads",
                "5",
                "--codec",
                "mjpeg",
                "--face-cascade",
                "/y.xml",
                "--encoder-preset",
                "slow",
            ]))
            .one()
            .unwrap();
        assert_eq!((cfg.threads.get(), cfg.output_options.codec.to_string()), (5, "mjpeg".into()));
        assert_eq!((cfg.output_options.crf, cfg.output_options.preset.as_deref()), (Some(20), Some("slow")));
        assert_eq!(cfg.filter_env.face_cascade, PathBuf::from("/y.xml"));

        let cfg = FileConfig::default().run(run_args(&[])).one().unwrap();
        assert_eq!(cfg.output_options, OutputOptions::default());
        assert_eq!(cfg.output_options.codec.encoder_name(), "libx264");
        assert_eq!(cfg.threads, default_threads());
    }

    #[test]
    fn the_old_thread_flags_and_keys_still_work_unshown() {
        let cfg = FileConfig::default().run(run_args(&["--workers", "3"])).one().unwrap();
        assert_eq!(cfg.threads.get(), 3);
        let cfg = FileConfig::default().run(run_args(&["-w", "4"])).one().unwrap();
        assert_eq!(cfg.threads.get(), 4);
        let file: FileConfig =
            toml::from_str("[run]\nworkers = 2\n[server]\nworkers = 5\n[worker]\nconcurrency = 6").unwrap();
        let get = |n: Option<NonZeroUsize>| n.map(NonZeroUsize::get);
        assert_eq!(
            (get(file.run.threads), get(file.server.threads), get(file.worker.threads)),
            (Some(2), Some(5), Some(6))
        );
        match crate::cli::Cli::parse_from(["vpd", "worker", "--concurrency", "7"]).command {
            crate::cli::Command::Worker(a) => assert_eq!(a.settings.threads.map(NonZeroUsize::get), Some(7)),
            other => panic!("not worker: {other:?}"),
        }
        let help = <crate::cli::Cli as clap::CommandFactory>::command()
            .find_subcommand_mut("run")
            .expect("run")
            .render_help()
            .to_string();
        assert!(help.contains("--threads") && !help.contains("--workers"), "{help}");
    }

    #[test]
    fn jobs_reads_the_keys_of_client_it_has_and_old_key_names_read_as_the_new() {
        let file: FileConfig =
            toml::from_str("[client]\nserver = \"unix:/run/vpd.sock\"\nwait = 7\ncodec = \"hevc\"\npreset = \"slow\"")
                .unwrap();
        let a = match crate::cli::Cli::parse_from(["vpd", "jobs"]).command {
            crate::cli::Command::Jobs(a) => a,
            other => panic!("not jobs: {other:?}"),
        };
        let cfg = file.jobs(a).unwrap();
        assert_eq!((cfg.server, cfg.wait), ("unix:/run/vpd.sock".parse().unwrap(), Duration::from_secs(7)));
        assert_eq!(file.client.encoding.encoder_preset.as_deref(), Some("slow"), "`preset` reads as encoder_preset");
        let both = toml::from_str::<FileConfig>("[run]\nworkers = 2\nthreads = 3").unwrap_err().to_string();
        assert!(both.contains("give `threads` or its old name `workers`, not both"), "{both}");
        let big = toml::from_str::<FileConfig>("[server]\nmax_upload = \"1K\"\nkeep_results = \"2h\"").unwrap();
        assert_eq!((big.server.max_upload, big.server.keep_results), (Some(1024), Some(Duration::from_secs(7200))));
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<FileConfig>("[run]\nworkerz = 3").is_err());
        let err = toml::from_str::<FileConfig>("[run]\ncodec = \"h266\"").unwrap_err().to_string();
        assert!(err.contains("unknown encoder 'h266'"), "{err}");
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vpd.example.toml");
        FileConfig::load(Some(&path)).unwrap();
    }

    /// Flags that name one invocation's work, or that act before the file is read: the example
    /// says why they have no key. Everything else on the command line has one.
    const NO_KEY: &[(&str, &str)] = &[
        ("*", "config"),
        ("*", "log-format"),
        ("*", "verbose"),
        ("*", "help"),
        ("*", "version"),
        ("*", "token"), // a secret: token_file or VPD_TOKEN
        ("run", "output"),
        ("run", "filter"),
        ("run", "format"),
        ("run", "resume"),
        ("run", "live"),
        ("client", "live"),
        ("run", "record-on"),
        ("run", "json"),
        ("run", "quiet"),
        ("client", "output"),
        ("client", "filter"),
        ("client", "format"),
        ("client", "attach"),
        ("client", "detach"),
        ("client", "json"),
        ("client", "quiet"),
        ("run", "preset"),
        ("client", "preset"),
        ("client", "jobs"),
        ("jobs", "json"),
        ("jobs", "limit"),
        ("jobs", "state-dir"), // a store to read once, not a default of the client
        ("worker", "name"),
    ];

    #[test]
    fn every_flag_has_a_key_in_the_example_and_every_key_there_parses() {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vpd.example.toml")).unwrap();
        // Every key, commented out or not, by table; and the file with all of them set.
        let mut keys: std::collections::HashMap<String, Vec<String>> = Default::default();
        let (mut table, mut all_set) = (String::new(), String::new());
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = name.to_string();
                all_set.push_str(line);
            } else {
                let setting = line.strip_prefix("# ").unwrap_or(line);
                let key = setting
                    .split_once(" = ")
                    .map(|(k, _)| k)
                    .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
                match key {
                    Some(key) if !key.is_empty() => {
                        keys.entry(table.clone()).or_default().push(key.to_string());
                        all_set.push_str(setting);
                    }
                    _ => {}
                }
            }
            all_set.push('\n');
        }
        let parsed: FileConfig = toml::from_str(&all_set).unwrap_or_else(|e| panic!("{e}\n{all_set}"));
        assert!(
            parsed.server.token_file.is_some() && parsed.client.encoding.bitrate.is_some(),
            "commented keys were set"
        );

        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        for role in ["run", "server", "worker", "client", "preview", "jobs"] {
            let sub = cmd.find_subcommand(role).unwrap();
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if NO_KEY.iter().any(|(r, f)| (*r == "*" || *r == role) && *f == long) || arg.is_hide_set() {
                    continue;
                }
                let table = match (role, long) {
                    (_, "face-cascade") => "filters",
                    ("jobs", _) => "client",
                    _ => role,
                };
                let key = long.replace('-', "_");
                if !keys.get(table).is_some_and(|k| k.contains(&key)) {
                    missing.push(format!("{role} --{long}: no `{key}` in [{table}]"));
                }
            }
        }
        assert!(missing.is_empty(), "config/vpd.example.toml lacks:\n{}", missing.join("\n"));
    }
}
