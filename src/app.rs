//! Start-up, written once for every role: logging, process tuning, the runtime, signals.
//!
//! The first SIGINT or SIGTERM cancels the shutdown token, which every role watches; a second
//! one exits at once.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cancel::Stop;
use crate::cli::{Cli, Command};
use crate::config::{ClientPlan, FileConfig, RunPlan};
use crate::pipeline::JobError;
use crate::progress::print_summary;
use crate::protocol::job::JobId;

/// glibc malloc arenas (`M_ARENA_MAX`): see `tune_process`.
const ALLOCATOR_ARENAS: i32 = 1;

/// Exit status after an interrupt, as shells report a process killed by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

/// Silences the native libraries' own stderr chatter: OpenCV's, and SVT-AV1's banner (it logs
/// outside FFmpeg; FFmpeg's own log is quieted in `media::init`). vpd reports failures itself,
/// in one line. Setting `OPENCV_LOG_LEVEL` or `SVT_LOG` brings them back. Call first thing in
/// `main`, before any thread starts.
pub fn quiet_native_logs() {
    for (key, value) in [("OPENCV_LOG_LEVEL", "ERROR"), ("SVT_LOG", "1")] {
        if std::env::var_os(key).is_none() {
            // SAFETY: called at the top of `main`, before any other thread exists, so nothing
            // reads the environment concurrently.
            unsafe { std::env::set_var(key, value) };
        }
    }
}

/// Runs the command `cli` names and returns the process exit status.
pub fn launch(cli: Cli) -> anyhow::Result<ExitCode> {
    // What documents the command line needs none of the rest.
    match &cli.command {
        Command::Completions { shell } => {
            crate::docs::completions(*shell, &mut std::io::stdout().lock())?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Manpages { dir } => {
            crate::docs::manpages(dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    crate::telemetry::init(cli.global.log_format, cli.global.verbose)?;
    tune_process()?;
    let file = FileConfig::load(cli.global.config.as_deref())?;
    let runtime = match cli.command {
        // Roles that serve many connections and drive RabbitMQ get a small thread pool; OpenCV
        // never runs on it (it has its own threads).
        Command::Server(_) | Command::Worker(_) | Command::Preview(_) => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?
        }
        Command::Run(_)
        | Command::Client(_)
        | Command::Jobs(_)
        | Command::Presets
        | Command::Completions { .. }
        | Command::Manpages { .. } => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        spawn_signal_listener(shutdown.clone())?;
        match cli.command {
            Command::Run(args) => {
                let stop = Stop::on_cancel(shutdown.clone(), &tokio::runtime::Handle::current());
                match file.run(args)? {
                    RunPlan::One(cfg) => {
                        let (quiet, json) = (cfg.quiet, cfg.json);
                        finished(tokio::task::spawn_blocking(move || crate::run::run(&cfg, stop)).await?, quiet, json)
                    }
                    RunPlan::Batch(jobs) => {
                        let (quiet, json) = jobs.first().map_or((false, false), |j| (j.quiet, j.json));
                        let report = tokio::task::spawn_blocking(move || {
                            crate::run::batch(&jobs, &stop, |row| {
                                if !quiet {
                                    crate::progress::print_batch_row(row);
                                }
                            })
                        })
                        .await?;
                        crate::progress::print_batch(&report, quiet, json)?;
                        Ok(batch_exit(&report))
                    }
                }
            }
            Command::Server(args) => {
                let cfg = file.server(args)?;
                let listeners = crate::server::Listeners::bind(&cfg)?;
                announce(&listeners.describe())?;
                crate::server::run(cfg, listeners, shutdown).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Worker(args) => {
                let cfg = file.worker(args)?;
                let metrics = cfg.metrics.map(crate::net::bind_tcp).transpose()?;
                if let Some(addr) = metrics.as_ref().and_then(|l| l.local_addr().ok()) {
                    announce(&[format!("metrics http://{addr}/")])?;
                }
                crate::worker::run(cfg, metrics, shutdown).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Jobs(args) => {
                crate::client::jobs(&file.jobs(args)?, shutdown).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Preview(args) => {
                let (cfg, listen) = file.preview(args)?;
                let listener = crate::net::bind_tcp(listen)?;
                announce(&[format!("preview http://{}/", listener.local_addr()?)])?;
                crate::preview::run(cfg, listener, shutdown).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Client(args) => {
                let (plan, json) = file.client(args)?;
                let cfg = match plan {
                    ClientPlan::One(cfg) => *cfg,
                    ClientPlan::Batch(jobs, at_once) => {
                        let report = crate::client::batch(&jobs, at_once, shutdown, |row| {
                            crate::progress::print_batch_row(row);
                        })
                        .await;
                        crate::progress::print_batch(&report, false, json)?;
                        return Ok(batch_exit(&report));
                    }
                };
                let followed = match &cfg.job {
                    crate::client::ClientJob::Submit { live: Some(_), .. } => {
                        crate::client::live::run(&cfg, shutdown).await
                    }
                    _ => crate::client::run(&cfg, shutdown).await,
                };
                match followed {
                    Ok(crate::client::Followed::Detached(job)) => {
                        detached(&job, &cfg)?;
                        Ok(ExitCode::SUCCESS)
                    }
                    Ok(crate::client::Followed::Finished(summary)) => finished(Ok(*summary), cfg.quiet, json),
                    Err(e) => finished(Err(e), cfg.quiet, json),
                }
            }
            Command::Presets => {
                crate::progress::print_presets(&mut std::io::stdout().lock(), &file.presets()?)?;
                Ok(ExitCode::SUCCESS)
            }
            // Written before the runtime started.
            Command::Completions { .. } | Command::Manpages { .. } => Ok(ExitCode::SUCCESS),
        }
    })
}

/// A job's end, whether it ran here (`run`) or on a server (`client`): its summary printed,
/// a cancel reported as an interrupt, a failure passed up.
fn finished(
    outcome: Result<crate::metrics::JobSummary, JobError>,
    quiet: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match outcome {
        Ok(summary) => {
            print_summary(&summary, quiet, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(JobError::Cancelled) => Ok(interrupted()),
        Err(JobError::Failed(e)) => Err(e),
    }
}

/// A batch's exit status: 130 when interrupted, 1 when a file failed.
fn batch_exit(report: &crate::batch::BatchReport) -> ExitCode {
    if report.cancelled > 0 {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--detach`: the job's id on stdout (for scripts), how to follow it on stderr.
fn detached(job: &JobId, cfg: &crate::client::ClientConfig) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{job}")?;
    out.flush()?;
    if !cfg.quiet {
        eprintln!(
            "vpd: job {job} is queued on {}; `vpd client --attach {job} -o {}` follows it",
            cfg.server,
            cfg.output.display()
        );
    }
    Ok(())
}

fn interrupted() -> ExitCode {
    eprintln!("vpd: cancelled; no output written");
    ExitCode::from(EXIT_INTERRUPTED)
}

/// Prints `listening ADDR` lines on stdout once the sockets are bound: a script (or a test)
/// waits for them instead of guessing when the server is ready, and learns the ports picked
/// for `:0`.
fn announce(lines: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "listening {line}")?;
    }
    out.flush()?;
    Ok(())
}

/// Process-wide settings the frame pipeline depends on for its speed.
fn tune_process() -> anyhow::Result<()> {
    // vpd parallelises across frames; OpenCV's own thread pool inside each call only adds
    // contention (Canny on 720p: 2.4 ms on one thread, 3.4 ms on two, with frames in parallel).
    opencv::core::set_num_threads(1)?;
    // Frames are multi-megabyte buffers allocated and freed at video rate. Above glibc's mmap
    // threshold each one is a fresh mapping whose pages fault in on first touch: on 600 720p
    // frames that was 1.1 s of kernel time against 0.35 s with frames kept in the heap (and
    // the heap not trimmed between frames), about 5 % of the wall time of `--filter edges`.
    //
    // Frames are also freed on other threads than the ones that allocated them, and glibc
    // gives every thread that meets contention an arena of its own (up to 8 per core): a
    // server's memory grew with each job, to 1.47x the first job's RSS after 24, as frames
    // were spread over more and more arenas. Two arenas held it to 1.25x; with FFmpeg's
    // decoder and encoder threads (issue 8) the footprint between jobs still swung by 50 MB
    // with two, and is flat with one (92 MB over 24 jobs), at the same speed (BENCHMARKS.md,
    // "Server memory across jobs"). Allocations are a few per frame against milliseconds of
    // work per frame: one arena's lock is not contended.
    // SAFETY: mallopt only adjusts allocator parameters; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ALLOCATOR_ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
    raise_open_files_limit();
    Ok(())
}

/// Raises the soft limit on open files to the hard one, as a service manager would: the
/// connection caps of the server (1000-odd clients and dashboards) assume it. Rust's standard
/// library leaves it at the usual 1024. A lower hard limit stays as it is.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn spawn_signal_listener(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if shutdown.is_cancelled() {
                eprintln!("vpd: interrupted again; exiting now");
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
            info!("stopping; interrupt again to exit at once");
            shutdown.cancel();
        }
    });
    Ok(())
}
