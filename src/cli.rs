//! The command line. Doc comments here are the `--help` text; values are checked in
//! [`crate::config`], which turns these types into validated configs for the roles.

// Help text speaks of addresses such as `[::]:9000`: brackets here are literal, not doc links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::broker::{BrokerUrls, QueueType};
use crate::filters::Chain;
use crate::media::VideoCodec;
use crate::net::ServerAddr;
use crate::protocol::job::{JobControl, JobId};
use crate::protocol::segment::Split;
use crate::protocol::wire::TransportEncoding;

/// vpd: split a video into frames, filter them in parallel, reassemble the result in order.
#[derive(Debug, Parser)]
#[command(name = "vpd", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Options every role takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The role to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every role takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML, one table per role; see config/vpd.example.toml).
    #[arg(long, global = true, env = "VPD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, env = "VPD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log output: -v info, -vv debug, -vvv trace (RUST_LOG, when set, wins).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The roles.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Process a video in this process, no broker needed: decode, filter on a thread pool, write in order.
    Run(RunArgs),
    /// Accept jobs from clients; filter their frames in-process or on workers through RabbitMQ.
    Server(ServerArgs),
    /// Filter frame tasks from RabbitMQ (run as many as you like, on any hosts).
    Worker(WorkerArgs),
    /// Send a video to a server, show its progress, download the result.
    Client(ClientArgs),
    /// Serve a live dashboard of the cluster's jobs (and Prometheus /metrics) from RabbitMQ's events.
    Preview(PreviewArgs),
    /// List the jobs a server ran (its job store), newest first; show, cancel, pause, resume,
    /// rerun or fetch one.
    Jobs(JobsArgs),
    /// List the presets (named filter chains for --preset): the built-in ones and the
    /// configuration file's [presets].
    Presets,
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (vpd.1, vpd-run.1, vpd-server.1, …) into a directory.
    #[command(hide = true)]
    Manpages {
        /// Where to write them.
        dir: PathBuf,
    },
}

/// `vpd jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// `show JOB`: everything recorded of one job.
    #[command(subcommand)]
    pub action: Option<JobsAction>,

    /// The server's token (prefer --token-file or the environment: a command line is visible to
    /// every user of the host).
    #[arg(long, env = "VPD_TOKEN", hide_env_values = true, value_name = "TOKEN", global = true)]
    pub token: Option<String>,

    /// JSON on stdout instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    /// At most this many jobs, newest first.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,

    /// Read the job store in DIR (its vpd.db) on this machine instead of asking a server: the
    /// jobs and clips `vpd run --record-on` recorded there, or a stopped server's history. It
    /// lists and shows; the controls need the server that runs the job.
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,

    /// The flags that are also keys of the configuration file.
    #[command(flatten)]
    pub settings: JobsSettings,
}

/// `vpd jobs`'s flags that are also keys of `[client]`.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct JobsSettings {
    /// The server: HOST:PORT, [IPV6]:PORT or unix:PATH [default: 127.0.0.1:9000].
    #[arg(short, long, env = "VPD_SERVER", value_name = "ADDR", global = true)]
    pub server: Option<ServerAddr>,

    /// Read the server's token from this file (its first line; keep it mode 0600).
    #[arg(long, env = "VPD_TOKEN_FILE", value_name = "FILE", global = true, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// TLS to the server.
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: TlsClientArgs,

    /// How long to keep trying, with growing pauses, while the server says it is busy or the
    /// client is over its limits, in seconds (0: give up at once) [default: 60].
    #[arg(long, value_name = "SECONDS", global = true, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub wait: Option<u64>,
}

/// What `vpd jobs` does besides listing: `show JOB`, or a job control, whose subcommands
/// (`cancel`, `pause`, `resume`, `rerun`, `fetch`) and help are made from [`JobControl::ALL`]:
/// a new control needs nothing here.
#[derive(Debug, Clone, PartialEq)]
pub enum JobsAction {
    /// Everything recorded of one job.
    Show(JobId),
    /// A job control; `output` is where `fetch` writes the result.
    Control {
        /// The job.
        job: JobId,
        /// What to do.
        control: JobControl,
        /// `fetch -o FILE`.
        output: Option<PathBuf>,
    },
}

/// `show`'s help.
const SHOW_HELP: &str = "Everything recorded of one job: its states and when, its input's size and sha256, its \
                         options, its summary, its error";

impl clap::FromArgMatches for JobsAction {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let Some((name, sub)) = matches.subcommand() else {
            return Err(clap::Error::raw(clap::error::ErrorKind::MissingSubcommand, "a job action is needed"));
        };
        let job = sub
            .get_one::<JobId>("job")
            .cloned()
            .ok_or_else(|| clap::Error::raw(clap::error::ErrorKind::MissingRequiredArgument, "JOB is needed"))?;
        if name == "show" {
            return Ok(JobsAction::Show(job));
        }
        let control = JobControl::ALL.into_iter().find(|c| c.as_str() == name).ok_or_else(|| {
            clap::Error::raw(clap::error::ErrorKind::InvalidSubcommand, format!("no job action '{name}'"))
        })?;
        let output = sub.try_get_one::<PathBuf>("output").ok().flatten().cloned();
        Ok(JobsAction::Control { job, control, output })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Subcommand for JobsAction {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        let job = || {
            clap::Arg::new("job")
                .value_name("JOB")
                .required(true)
                .value_parser(|s: &str| s.parse::<JobId>())
                .help("The job's id (as `vpd jobs` lists it)")
        };
        let mut cmd = cmd.subcommand(clap::Command::new("show").about(SHOW_HELP).arg(job()));
        for control in JobControl::ALL {
            let mut sub = clap::Command::new(control.as_str()).about(control.help()).arg(job());
            if control == JobControl::Fetch {
                sub = sub.arg(
                    clap::Arg::new("output")
                        .short('o')
                        .long("output")
                        .value_name("FILE")
                        .required(true)
                        .value_parser(clap::value_parser!(PathBuf))
                        .help("Where to write the result"),
                );
            }
            cmd = cmd.subcommand(sub);
        }
        cmd
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        name == "show" || JobControl::ALL.iter().any(|c| c.as_str() == name)
    }
}

/// What the filters need on this host: flags of `run`, `server` and `worker`, keys of
/// `[filters]`.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct FilterSettings {
    /// Haar cascade for `faces` [default: Debian's opencv-data frontal-face cascade].
    #[arg(long, env = "VPD_FACE_CASCADE", value_name = "XML")]
    pub face_cascade: Option<PathBuf>,
}

/// `vpd server`.
#[derive(Debug, Args)]
#[command(after_help = filter_help())]
pub struct ServerArgs {
    /// Require clients to present this token (prefer --token-file or the environment: a command
    /// line is visible to every user of the host).
    #[arg(long, env = "VPD_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// What the filters need on this host (keys of `[filters]`).
    #[command(flatten)]
    pub filters: FilterSettings,

    /// The flags that are also keys of the configuration file.
    #[command(flatten)]
    pub settings: ServerSettings,
}

/// `vpd server`'s flags that are also the keys of `[server]`.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// TCP address to listen on; `[::]:PORT` takes IPv4 and IPv6 clients [default: [::]:9000,
    /// unless only --unix is given].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Also (or only) listen on this Unix socket (created with mode 0660, removed on exit).
    #[arg(long, value_name = "PATH")]
    pub unix: Option<PathBuf>,

    /// RabbitMQ URL, or a cluster's nodes comma-separated (tried in order): dispatch frames to
    /// `vpd worker`s. Without it, frames are filtered in this process.
    #[arg(long, env = "VPD_AMQP_URL", value_name = "URL[,URL...]")]
    pub amqp: Option<BrokerUrls>,

    /// In-process filter threads, when there is no --amqp [default: the number of CPU cores].
    #[arg(short = 't', long, value_name = "N", alias = "workers", short_alias = 'w')]
    pub threads: Option<NonZeroUsize>,

    /// Read the token from this file (its first line; keep it mode 0600).
    #[arg(long, env = "VPD_TOKEN_FILE", value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// Clients by token: a TOML file of [[client]] tables (name, token, role = submit or read,
    /// jobs, upload_per_hour, fps), read again on SIGHUP; keep it mode 0600.
    #[arg(long, env = "VPD_TOKENS_FILE", value_name = "FILE", conflicts_with_all = ["token", "token_file"])]
    pub tokens_file: Option<PathBuf>,

    /// Largest upload accepted, in bytes; K, M and G suffixes allowed [default: 4G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(with = "text::size")]
    pub max_upload: Option<u64>,

    /// Jobs processed at once; more wait for a slot [default: 2].
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<NonZeroUsize>,

    /// A scratch directory, locked while the server runs [default: a fresh directory under the
    /// system's temporary directory]. Uploads no longer go there: they grow in the state
    /// directory, where they survive a restart. Kept so that existing configurations start.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// Where the job store (vpd.db, SQLite) and the jobs' uploads, segments and results live
    /// [default: $STATE_DIRECTORY under systemd, else $XDG_STATE_HOME/vpd, else
    /// ~/.local/state/vpd].
    #[arg(long, env = "VPD_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Jobs' output is committed in segments of about this many seconds, each encoded on its
    /// own: a restart redoes at most one per job [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub segment_seconds: Option<f64>,

    /// How long an ended job's upload and result are kept for attach, fetch and rerun: 90s,
    /// 30m, 24h, 7d [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "text::duration")]
    pub keep_results: Option<std::time::Duration>,

    /// Most bytes the kept jobs may take; past it the oldest ended jobs' files go first
    /// [default: 20G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(with = "text::size")]
    pub max_stored: Option<u64>,

    /// Prefix of every queue and exchange name.
    #[arg(long, env = "VPD_NAMESPACE", value_name = "NAME")]
    pub namespace: Option<String>,

    /// Kind of the namespace's work queues: classic (one node holds them) or quorum (replicated
    /// across a cluster) [default: classic].
    #[arg(long, value_enum, env = "VPD_QUEUE_TYPE", value_name = "TYPE")]
    pub queue_type: Option<QueueType>,

    /// Sign and check every task, result and event on the broker with this key (HMAC-SHA256;
    /// 32 bytes or more, the same file on every server, worker and preview; mode 0600).
    #[arg(long, env = "VPD_CLUSTER_KEY_FILE", value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,

    /// Re-dispatch a frame that has had no result for this many seconds while other frames
    /// keep coming back [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub redispatch_after: Option<f64>,

    /// What a client's --split auto means here: auto (segments when the video has 3 or more
    /// and can be cut as packets), frames or segments [default: auto].
    #[arg(long, value_name = "MODE")]
    pub split: Option<Split>,

    /// The largest segment message put on the broker, in bytes; a larger task or result goes on
    /// a RabbitMQ stream of its own, in parts [default: 8388608].
    #[arg(long, value_name = "BYTES")]
    pub max_message: Option<usize>,

    /// How a job's frames go out in frame mode: auto (frames of 3840x2160 and more in tiles,
    /// each a task within --max-message, filtered at once by any workers and put back together
    /// exactly), off (each frame one task), or COLSxROWS (every frame in that grid)
    /// [default: auto].
    #[arg(long, value_name = "GRID")]
    pub tiles: Option<crate::filters::tiles::Tiles>,

    /// Frames in flight per job, fixed [default: from the frame size; with --amqp, as many on
    /// the broker as keep every worker fed without flooding the queue].
    #[arg(long, value_name = "N")]
    pub window: Option<NonZeroUsize>,

    /// Serve the web application (sign in, upload, watch, play, download, history), the
    /// dashboard of this server's jobs and /metrics on this address, e.g. [::]:8080.
    #[arg(long, value_name = "ADDR")]
    pub preview: Option<SocketAddr>,

    /// With no token configured, let browsers beyond this host upload and control jobs from
    /// the web application (without it, only loopback peers may).
    #[arg(long)]
    pub web_open: bool,

    /// Serve Prometheus /metrics and /healthz on this address, e.g. [::]:9100.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Speak TLS on the TCP listener and the --preview and --metrics ports with this PEM
    /// certificate chain (leaf first); with --tls-key. The Unix socket stays plain.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (keep it mode 0600).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// How a client reaches a server that speaks TLS.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsClientArgs {
    /// Speak TLS to the server, verifying its name against the system's CA roots (implied by
    /// --tls-ca and --tls-fingerprint).
    #[arg(long, global = true)]
    pub tls: bool,

    /// Speak TLS, verifying the server against the CA certificates in this PEM file (instead of
    /// the system's).
    #[arg(long, value_name = "PEM", global = true, conflicts_with = "tls_fingerprint")]
    pub tls_ca: Option<PathBuf>,

    /// Speak TLS, accepting only the certificate with this SHA-256 fingerprint (the server logs
    /// it as it starts; `openssl x509 -noout -fingerprint -sha256` prints it too).
    #[arg(long, value_name = "SHA256", global = true)]
    pub tls_fingerprint: Option<crate::tls::Fingerprint>,
}

/// `vpd preview`.
#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// Show the dashboard only to those presenting this token (prefer --token-file or the
    /// environment): `/?token=…` once in a browser, or `Authorization: Bearer …`.
    #[arg(long, env = "VPD_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// The flags that are also keys of the configuration file.
    #[command(flatten)]
    pub settings: PreviewSettings,
}

/// `vpd preview`'s flags that are also the keys of `[preview]`.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct PreviewSettings {
    /// Address of the dashboard; `[::]:PORT` takes IPv4 and IPv6 [default: [::]:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// RabbitMQ URL (the servers' broker), or a cluster's nodes comma-separated (tried in order).
    #[arg(long, env = "VPD_AMQP_URL", value_name = "URL[,URL...]")]
    pub amqp: Option<BrokerUrls>,

    /// Prefix of every queue and exchange name (as given to the servers).
    #[arg(long, env = "VPD_NAMESPACE", value_name = "NAME")]
    pub namespace: Option<String>,

    /// Kind of the namespace's work queues, as given to the servers [default: classic].
    #[arg(long, value_enum, env = "VPD_QUEUE_TYPE", value_name = "TYPE")]
    pub queue_type: Option<QueueType>,

    /// Sign and check every task, result and event on the broker with this key (HMAC-SHA256;
    /// 32 bytes or more, the same file on every server, worker and preview; mode 0600).
    #[arg(long, env = "VPD_CLUSTER_KEY_FILE", value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,

    /// A server's state directory on this host: the dashboard also lists the jobs its store
    /// remembers (read only).
    #[arg(long, env = "VPD_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Read that token from this file (its first line; keep it mode 0600).
    #[arg(long, env = "VPD_TOKEN_FILE", value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// Serve the dashboard over TLS with this PEM certificate chain (leaf first); with --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (keep it mode 0600).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// `vpd worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// What the filters need on this host (keys of `[filters]`).
    #[command(flatten)]
    pub filters: FilterSettings,

    /// This worker's name in its id, HOST:NAME, as dashboards and /metrics show it (a systemd
    /// unit passes its instance: vpd-worker@3 is HOST:3) [default: the process id].
    #[arg(long, value_name = "NAME", value_parser = parse_worker_name)]
    pub name: Option<String>,

    /// The flags that are also keys of the configuration file.
    #[command(flatten)]
    pub settings: WorkerSettings,
}

/// `vpd worker`'s flags that are also the keys of `[worker]`.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// RabbitMQ URL, or a cluster's nodes comma-separated (tried in order).
    #[arg(long, env = "VPD_AMQP_URL", value_name = "URL[,URL...]")]
    pub amqp: Option<BrokerUrls>,

    /// Filter threads, and tasks held at once [default: the number of CPU cores].
    #[arg(short = 't', long, value_name = "N", alias = "concurrency", short_alias = 'c')]
    pub threads: Option<NonZeroUsize>,

    /// Prefix of every queue and exchange name (as given to the server).
    #[arg(long, env = "VPD_NAMESPACE", value_name = "NAME")]
    pub namespace: Option<String>,

    /// Kind of the namespace's work queues: classic (one node holds them) or quorum (replicated
    /// across a cluster) as given to the server [default: classic].
    #[arg(long, value_enum, env = "VPD_QUEUE_TYPE", value_name = "TYPE")]
    pub queue_type: Option<QueueType>,

    /// Sign and check every task, result and event on the broker with this key (HMAC-SHA256;
    /// 32 bytes or more, the same file on every server, worker and preview; mode 0600).
    #[arg(long, env = "VPD_CLUSTER_KEY_FILE", value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,

    /// Serve Prometheus /metrics and /healthz on this address, e.g. [::]:9101.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// The largest frame this worker takes, in pixels or as WIDTHxHEIGHT (up to 8192x8192);
    /// larger ones are reported failed, unread [default: 3840x2160, 4K]. An 8K frame costs a
    /// worker about 1.1 GB while it is filtered.
    #[arg(long, value_name = "PIXELS", value_parser = parse_frame_pixels)]
    #[serde(with = "text::pixels")]
    pub max_frame_pixels: Option<u64>,
}

/// `N` or `WxH`, within 1 ..= 8192x8192.
pub fn parse_frame_pixels(s: &str) -> Result<u64, String> {
    let pixels = match s.split_once(['x', 'X']) {
        Some((w, h)) => {
            let side = |v: &str| v.trim().parse::<u64>().map_err(|_| format!("'{s}' is not WIDTHxHEIGHT"));
            side(w)? * side(h)?
        }
        None => s.trim().parse::<u64>().map_err(|_| format!("'{s}' is not a number of pixels or WIDTHxHEIGHT"))?,
    };
    let most = crate::protocol::wire::MAX_FRAME_PIXELS;
    if pixels == 0 || pixels > most {
        return Err(format!("{pixels} pixels is out of range: 1 to {most} (8192x8192)"));
    }
    Ok(pixels)
}

/// `vpd client`.
#[derive(Debug, Clone, Args)]
#[command(after_help = filter_help())]
pub struct ClientArgs {
    /// The video to process (not with --attach). Several (a shell glob) make a batch into the
    /// directory -o names, --jobs at once.
    #[arg(required_unless_present = "attach", num_args = 1..)]
    pub input: Vec<PathBuf>,

    /// In a batch, jobs submitted at once (the server queues what exceeds its slots).
    #[arg(long, value_name = "N", default_value = "1")]
    pub jobs: NonZeroUsize,

    /// Where to write the result; its extension picks the container (.mp4, .mkv, .webm, .mov,
    /// …). A symbolic link is written through: the file it points to is replaced, the link
    /// stays. With --detach it only names the container (MP4 when left out): the result is
    /// fetched later with `vpd jobs fetch JOB -o FILE`.
    #[arg(short, long, value_name = "FILE", required_unless_present = "detach")]
    pub output: Option<PathBuf>,

    /// Filter chain, applied in order, e.g. `blur:ksize=21,edges` (see below).
    #[arg(short, long, value_name = "CHAIN", required_unless_present_any = ["attach", "preset"])]
    pub filter: Option<Chain>,

    /// A named chain instead of --filter (`vpd presets` lists them), e.g. cinematic.
    #[arg(long, value_name = "NAME", conflicts_with = "filter")]
    pub preset: Option<String>,

    /// Leave once the upload is whole: print the job's id and exit, the job goes on.
    #[arg(long, conflicts_with = "attach")]
    pub detach: bool,

    /// Follow a job submitted before (by its id): progress from where it is, then the result.
    #[arg(long, value_name = "JOB", conflicts_with_all = ["input", "filter", "preset"])]
    pub attach: Option<JobId>,

    /// Send the input live, as it comes, until Ctrl-C or its end: the server filters it and the
    /// result comes back as it is encoded, into -o (a file, a stream URL or an HLS playlist).
    /// Inferred for network URLs and /dev/video* devices.
    #[arg(long, conflicts_with = "attach")]
    pub live: bool,

    /// The server's token (prefer --token-file or the environment: a command line is visible to
    /// every user of the host).
    #[arg(long, env = "VPD_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// The result's container, and how the job is reported.
    #[command(flatten)]
    pub result: ResultArgs,

    /// The flags that are also keys of the configuration file.
    #[command(flatten)]
    pub settings: ClientSettings,
}

/// `vpd client`'s flags that are also the keys of `[client]`.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientSettings {
    /// The server: HOST:PORT, [IPV6]:PORT or unix:PATH [default: 127.0.0.1:9000].
    #[arg(short, long, env = "VPD_SERVER", value_name = "ADDR")]
    pub server: Option<ServerAddr>,

    /// How the output is encoded.
    #[command(flatten)]
    #[serde(flatten)]
    pub encoding: OutputSettings,

    /// How frames travel to remote workers: auto (lossless: LZ4 when it pays, else raw), raw,
    /// lz4, or jpeg:QUALITY (lossy, smaller) [default: auto].
    #[arg(long, value_name = "ENCODING")]
    pub transport: Option<TransportEncoding>,

    /// How the server spreads the job over its workers: segments (workers decode, filter and
    /// encode whole segments of compressed video), frames (the server decodes and sends every
    /// frame), or auto (segments when the video has 3 or more and can be cut as packets)
    /// [default: auto].
    #[arg(long, value_name = "MODE")]
    pub split: Option<Split>,

    /// Read the server's token from this file (its first line; keep it mode 0600).
    #[arg(long, env = "VPD_TOKEN_FILE", value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// TLS to the server.
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: TlsClientArgs,

    /// Of a live input: the latency to stay under, in seconds, from a frame's packet being read
    /// to its encoded packet being written; the server drops frames before dispatch to keep it
    /// [default: 1].
    #[arg(long, value_name = "SECONDS")]
    pub max_latency: Option<f64>,

    /// How long to keep trying, with growing pauses, while the server says it is busy or the
    /// client is over its limits, in seconds (0: give up at once) [default: 300].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub wait: Option<u64>,
}

/// A worker name: 1–64 letters, digits, `.`, `_`, `-` or `@`.
fn parse_worker_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok { Ok(s.to_string()) } else { Err(format!("'{s}': use 1-64 letters, digits, '.', '_', '-' or '@'")) }
}

/// Parses `0`, `90s`, `30m`, `24h`, `7d` (a number alone is seconds) into a duration.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => 0,
    };
    digits
        .parse::<u64>()
        .ok()
        .filter(|_| scale > 0)
        .and_then(|n| n.checked_mul(scale))
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("'{s}' is not a duration such as 90s, 30m, 24h or 7d"))
}

/// Parses `4096`, `512K`, `100M`, `4G` (binary multiples) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.trim().to_ascii_uppercase().chars().last() {
        Some('K') => (&s.trim()[..s.trim().len() - 1], 10),
        Some('M') => (&s.trim()[..s.trim().len() - 1], 20),
        Some('G') => (&s.trim()[..s.trim().len() - 1], 30),
        _ => (s.trim(), 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("'{s}' is not a size such as 4096, 512K, 100M or 4G"))
}

/// How the output video is encoded (`vpd run` and `vpd client`; keys of `[run]` and
/// `[client]`): one group, turned into [`crate::media::OutputOptions`] once, in
/// [`OutputSettings::options`].
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputSettings {
    /// Video encoder: h264 (libx264), hevc (libx265), vp9, av1 (SVT-AV1), ffv1 (lossless), mpeg4,
    /// mjpeg, or any FFmpeg video encoder by name (h264_nvenc, hevc_nvenc, h264_vaapi, …)
    /// [default: h264].
    #[arg(long, value_name = "CODEC")]
    pub codec: Option<VideoCodec>,

    /// Constant quality: lower is better and larger [default: 23 for h264, 28 hevc, 31 vp9, 35
    /// av1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=63))]
    pub crf: Option<u32>,

    /// The encoder's speed against size: ultrafast … veryslow for h264 and hevc [default:
    /// veryfast for h264, medium for hevc], 0-13 for av1, 0-8 (cpu-used) for vp9. (--preset
    /// names a filter chain.)
    #[arg(long, value_name = "NAME")]
    pub encoder_preset: Option<String>,

    /// Target bitrate instead of a constant quality, e.g. 4M or 800K (bits per second).
    #[arg(long, value_name = "RATE", value_parser = parse_bitrate)]
    #[serde(with = "text::bitrate")]
    pub bitrate: Option<u64>,

    /// Most frames between two key frames.
    #[arg(long, value_name = "N")]
    pub keyint: Option<u32>,

    /// Pixel format to encode in, e.g. yuv444p or yuv420p10le [default: yuv420p; bgr0 for ffv1].
    #[arg(long, value_name = "FORMAT")]
    pub pix_fmt: Option<String>,
}

/// Parses a bitrate: `800000`, `800K`, `4M`, `1.5M` (decimal multiples, as FFmpeg's).
pub fn parse_bitrate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, factor) = match t.to_ascii_uppercase().chars().last() {
        Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        _ => (t, 1.0),
    };
    digits
        .parse::<f64>()
        .ok()
        .map(|n| n * factor)
        .filter(|n| n.is_finite() && (1000.0..=1e10).contains(n))
        .map(|n| n as u64)
        .ok_or_else(|| format!("'{s}' is not a bitrate such as 800K or 4M (1K to 10000M)"))
}

/// The result's container and how a job is reported on the terminal (`vpd run`, `vpd client`).
#[derive(Debug, Clone, Default, Args)]
pub struct ResultArgs {
    /// No progress bar and no summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,

    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Container when the output's extension does not say, as `-o -` needs: mp4, matroska,
    /// nut, webm, mpegts, …
    #[arg(long, value_name = "CONTAINER")]
    pub format: Option<String>,
}

/// `vpd run`.
#[derive(Debug, Clone, Args)]
#[command(after_help = filter_help())]
pub struct RunArgs {
    /// The video to process; `-` is standard input; named pipes work too. Several (a shell
    /// glob) make a batch: one after another into the directory -o names.
    #[arg(required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,

    /// Where to write the result; its extension picks the container (.mp4, .mkv, .webm, .mov,
    /// …), `-` is standard output (with --format). A symbolic link is written through: the file
    /// it points to is replaced, the link stays.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,

    /// Filter chain, applied in order, e.g. `blur:ksize=21,edges` (see below).
    #[arg(short, long, value_name = "CHAIN", required_unless_present = "preset")]
    pub filter: Option<Chain>,

    /// A named chain instead of --filter (`vpd presets` lists them), e.g. cinematic.
    #[arg(long, value_name = "NAME", conflicts_with = "filter")]
    pub preset: Option<String>,

    /// What the filters need on this host (keys of `[filters]`).
    #[command(flatten)]
    pub filters: FilterSettings,

    /// Continue a run that was interrupted (killed, Ctrl-C, a full disk) from its last
    /// committed segment, kept beside the output; without it, what such a run left is replaced.
    #[arg(long)]
    pub resume: bool,

    /// Read the input live, as it comes, until Ctrl-C or its end: frames are dropped before
    /// dispatch when the filters fall behind. Inferred for rtsp://, srt://, udp://, rtmp://,
    /// http(s):// and other network URLs, and for /dev/video* devices.
    #[arg(long, conflicts_with = "resume")]
    pub live: bool,

    /// Of a live input, write clips only while this detector fires, each with --pre-roll and
    /// --post-roll around it; -o is then the clips' name with strftime fields
    /// (`cam-%Y%m%d-%H%M%S.mp4`), and each clip is recorded in the job store (--state-dir).
    #[arg(long, value_name = "DETECTOR", conflicts_with = "resume")]
    pub record_on: Option<crate::pipeline::trigger::RecordOn>,

    /// The result's container, and how the job is reported.
    #[command(flatten)]
    pub result: ResultArgs,

    /// The flags that are also keys of the configuration file.
    #[command(flatten)]
    pub settings: RunSettings,
}

/// `vpd run`'s flags that are also the keys of `[run]`.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSettings {
    /// Filter threads [default: the number of CPU cores].
    #[arg(short = 't', long, value_name = "N", alias = "workers", short_alias = 'w')]
    pub threads: Option<NonZeroUsize>,

    /// How the output is encoded.
    #[command(flatten)]
    #[serde(flatten)]
    pub encoding: OutputSettings,

    /// Most frames in flight between decoding and writing [default: 2 × threads + 4, capped to
    /// 512 MB of frames].
    #[arg(long, value_name = "N")]
    pub window: Option<NonZeroUsize>,

    /// The output is committed in segments of about this many seconds, each encoded on its own
    /// (a resume redoes at most one) [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub segment_seconds: Option<f64>,

    /// The latency a live job is to stay under, in seconds, from a frame's packet being read to
    /// its encoded packet being written; a frame waits for dispatch at most a quarter of it
    /// [default: 1].
    #[arg(long, value_name = "SECONDS")]
    pub max_latency: Option<f64>,

    /// Cut large frames into tiles filtered at once, each with the margin its filters need,
    /// so the result is the untiled one exactly: auto (frames of 3840x2160 and more), off, or
    /// COLSxROWS (e.g. 2x2). edges finds its edges in the tiles and follows them across the
    /// seams on the joined frame; from a chain's first step that needs the whole frame (faces,
    /// motion, scale) on, its steps run on the joined frame [default: auto].
    #[arg(long, value_name = "GRID")]
    pub tiles: Option<crate::filters::tiles::Tiles>,

    /// Seconds a --record-on clip keeps before the detector first fires (it starts at the
    /// keyframe before them) [default: 2].
    #[arg(long, value_name = "SECONDS")]
    pub pre_roll: Option<f64>,

    /// Seconds a --record-on clip goes on after the detector last fires [default: 5].
    #[arg(long, value_name = "SECONDS")]
    pub post_roll: Option<f64>,

    /// Where --record-on keeps its job store (vpd.db), which records each clip [default: the
    /// clips' directory].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// The filter reference appended to `--help`, from the filters' definitions
/// ([`crate::filters::FILTERS`]), then the built-in presets (`vpd presets` lists the config
/// file's too).
pub fn filter_help() -> String {
    let mut text = String::from("Filters (parameters as name:key=value:key=value, filters separated by commas):\n");
    for def in crate::filters::FILTERS {
        text.push_str(&format!("  {:<8} {}\n", def.name, def.help));
        // Its parameters, as many to a line as fit in `--help`'s 100 columns.
        let mut line = String::new();
        for p in def.params {
            let param = format!("{}={} ({})", p.key, p.default, p.note);
            if !line.is_empty() && 11 + line.len() + 2 + param.len() > 96 {
                text.push_str(&format!("           {line}\n"));
                line.clear();
            }
            if !line.is_empty() {
                line.push_str("  ");
            }
            line.push_str(&param);
        }
        if !line.is_empty() {
            text.push_str(&format!("           {line}\n"));
        }
    }
    text.push_str("Detectors (faces, motion) look at the source frame and draw on the chain's current image.\n");
    text.push_str("Presets (--preset NAME):\n");
    for (name, chain) in crate::filters::presets::BUILT_IN {
        text.push_str(&format!("  {name:<11}{chain}\n"));
    }
    text.trim_end().to_string()
}

/// How the configuration file writes what the command line parses: sizes, durations, bitrates
/// and frame sizes as text (`"4G"`, `"24h"`, `"4M"`, `"3840x2160"`) or as plain numbers, read
/// by the same parsers as the flags. Written back as numbers (seconds for a duration).
mod text {
    use serde::{Deserialize, Deserializer, Serializer};

    /// A number, or text for `parse`.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(u64),
        Float(f64),
        Text(String),
    }

    fn read<'de, D: Deserializer<'de>, T>(
        d: D,
        parse: fn(&str) -> Result<T, String>,
        number: fn(f64) -> Result<T, String>,
    ) -> Result<Option<T>, D::Error> {
        let given = Option::<Given>::deserialize(d)?;
        let value = match given {
            None => return Ok(None),
            Some(Given::Number(n)) => number(n as f64),
            Some(Given::Float(n)) => number(n),
            Some(Given::Text(t)) => parse(&t),
        };
        value.map(Some).map_err(serde::de::Error::custom)
    }

    fn whole(n: f64) -> Result<u64, String> {
        if n.is_finite() && n >= 1.0 && n.fract() == 0.0 && n <= u64::MAX as f64 {
            Ok(n as u64)
        } else {
            Err(format!("{n} is not a positive whole number"))
        }
    }

    fn write<S: Serializer>(n: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match n {
            Some(n) => s.serialize_u64(*n),
            None => s.serialize_none(),
        }
    }

    /// Bytes: `4096`, `"512K"`, `"4G"`.
    pub mod size {
        pub fn serialize<S: serde::Serializer>(n: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            super::write(n, s)
        }
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            super::read(d, crate::cli::parse_size, super::whole)
        }
    }

    /// Bits per second: `800000`, `"800K"`, `"4M"`.
    pub mod bitrate {
        pub fn serialize<S: serde::Serializer>(n: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            super::write(n, s)
        }
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            super::read(d, crate::cli::parse_bitrate, |n| crate::cli::parse_bitrate(&n.to_string()))
        }
    }

    /// Pixels: `8294400`, `"3840x2160"`.
    pub mod pixels {
        pub fn serialize<S: serde::Serializer>(n: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            super::write(n, s)
        }
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            super::read(d, crate::cli::parse_frame_pixels, |n| crate::cli::parse_frame_pixels(&n.to_string()))
        }
    }

    /// A duration: seconds, or `"90s"`, `"30m"`, `"24h"`, `"7d"`.
    pub mod duration {
        use std::time::Duration;

        pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_f64(d.as_secs_f64()),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::read(d, crate::cli::parse_duration, |n| {
                if n.is_finite() && n >= 0.0 {
                    Ok(Duration::from_secs_f64(n))
                } else {
                    Err(format!("{n} is not a duration"))
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        for bad in ["", "0", "G", "4T", "-1", "1.5G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_bitrate("4M"), Ok(4_000_000));
        assert_eq!(parse_bitrate("1.5m"), Ok(1_500_000));
        assert_eq!(parse_bitrate("800K"), Ok(800_000));
        for bad in ["", "fast", "10", "-4M", "99999M"] {
            assert!(parse_bitrate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_readmes_filter_table_has_every_filter_and_parameter_of_the_definitions() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for def in crate::filters::FILTERS {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", def.name)))
                .unwrap_or_else(|| panic!("README.md's filter table has no row for {}", def.name));
            for p in def.params {
                let written = format!("`{}={}`", p.key, p.default);
                assert!(
                    row.contains(&written) || (p.default == "0" && row.contains(&format!("`{}`", p.key))),
                    "README.md's row for {} lacks {written}",
                    def.name
                );
            }
        }
    }

    #[test]
    fn help_lists_every_filter_and_every_built_in_preset() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        for role in ["run", "client", "server"] {
            let help = cli.find_subcommand_mut(role).unwrap().render_long_help().to_string();
            for def in crate::filters::FILTERS {
                let name = def.name;
                assert!(help.contains(&format!("\n  {name} ")), "{role} --help lacks the filter {name}");
                for p in def.params {
                    let given = format!("{}={} ({})", p.key, p.default, p.note);
                    assert!(help.contains(&given), "{role} --help lacks {name}'s {given}");
                }
            }
            for (name, _) in crate::filters::presets::BUILT_IN {
                assert!(help.contains(&format!("\n  {name} ")), "{role} --help lacks the preset {name}");
            }
        }
    }

    /// Every `vpd …` line in README.md's code blocks parses (`a|b|c` in a word stands for each
    /// of them; `…` stands for arguments left out).
    #[test]
    fn every_command_line_in_the_readme_parses() {
        use clap::Parser as _;
        let mut in_block = false;
        let mut checked = 0;
        for line in include_str!("../README.md").lines() {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
                continue;
            }
            if !in_block {
                continue;
            }
            for segment in line.split(" | ") {
                let command = segment.split("  #").next().unwrap_or_default().trim();
                let Some(rest) = command.strip_prefix("vpd ") else { continue };
                let words: Vec<&str> = rest.split_whitespace().filter(|w| *w != "…").collect();
                let choices = words.iter().find(|w| w.contains('|')).map_or(1, |w| w.split('|').count());
                for choice in 0..choices {
                    let argv = words.iter().map(|w| {
                        let w = if w.contains('|') { w.split('|').nth(choice).unwrap_or_default() } else { w };
                        w.trim_matches('"').to_string()
                    });
                    let argv: Vec<String> = std::iter::once("vpd".to_string()).chain(argv).collect();
                    if let Err(e) = Cli::try_parse_from(&argv) {
                        panic!("README: `{command}` does not parse: {e}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 30, "only {checked} command lines found in README.md");
    }

    #[test]
    fn frame_pixels_parse_as_a_count_or_a_size() {
        assert_eq!(parse_frame_pixels("3840x2160"), Ok(3840 * 2160));
        assert_eq!(parse_frame_pixels("1000"), Ok(1000));
        for bad in ["0", "8193x8192", "x", "4kx2k", ""] {
            assert!(parse_frame_pixels(bad).is_err(), "{bad}");
        }
    }
}
