//! `vpd run`: one video through the pipeline in this process, with a pool of filter threads.
//!
//! The output is committed in segments into a checkpoint directory beside it,
//! `.NAME.vpd-resume/`: the segments, `job.json` (what the run is: input, chain, output
//! options, segment length) and `segments.jsonl` (one line per committed segment, fsynced).
//! A run that completes removes it. One that is killed, interrupted or fails keeps it, and
//! `--resume` continues from its last committed segment; a run without `--resume` replaces it.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::batch::{BatchReport, BatchRow};
use crate::cancel::Stop;
use crate::config::RunConfig;
use crate::job::{Finished, Writing};
use crate::media::{MediaError, OutputOptions, STDIO, SegmentRecord, segment_path};
use crate::metrics::JobSummary;
use crate::pipeline::{JobError, JobOptions};
use crate::progress::ProgressView;
use crate::protocol::job::JobId;
use crate::protocol::wire::TransportEncoding;
use crate::transport::JobContext;
use crate::transport::local::LocalTransport;
use crate::transport::tiled::Tiling;

/// Processes `cfg.input` into `cfg.output` and reports what it did.
pub fn run(cfg: &RunConfig, stop: Stop) -> Result<JobSummary, JobError> {
    if cfg.live {
        return run_live(cfg, stop);
    }
    // Held until the job has opened the pipe itself: the writer's first bytes wait in it.
    let _fifo = wait_for_writer(&cfg.input, &stop, cfg.quiet)?;
    let checkpoint = Checkpoint::for_run(cfg)?;
    let writing = match &checkpoint {
        None => Writing::Direct,
        Some(c) => c.writing(cfg),
    };
    let finished = process(cfg, stop, writing, checkpoint.as_ref());
    let Some(c) = &checkpoint else { return finished.map(|f| f.summary) };
    match finished {
        Ok(f) => {
            c.remove();
            Ok(f.summary)
        }
        // What a resume can finish: an interrupted run, a disk that filled up.
        Err(JobError::Cancelled) => {
            if let Some(kept) = c.keep_or_remove()
                && !cfg.quiet
            {
                eprintln!("vpd: {kept}");
            }
            Err(JobError::Cancelled)
        }
        // The error itself says what was kept and how to go on: it is printed even with -q.
        Err(JobError::Failed(e)) if is_no_space(&e) => match c.keep_or_remove() {
            Some(kept) => Err(JobError::Failed(anyhow::anyhow!("{e:#}; {kept} once there is room"))),
            None => Err(JobError::Failed(e)),
        },
        // A resume that failed keeps what the earlier run committed: a cascade or a disk
        // put right lets it go on (a run without --resume replaces it).
        Err(JobError::Failed(e)) if !c.committed.is_empty() => match c.keep_or_remove() {
            Some(kept) => Err(JobError::Failed(anyhow::anyhow!("{e:#}; {kept}"))),
            None => Err(JobError::Failed(e)),
        },
        // A bad input or a failing filter fails again: nothing is kept.
        Err(JobError::Failed(e)) => {
            c.remove();
            Err(JobError::Failed(e))
        }
    }
}

/// When `input` is a named pipe with no writer yet, says so and waits for one (opening it for
/// reading would block, deaf to Ctrl-C, until one came); a stop ends the wait. Returns the
/// pipe, opened without blocking, to hold until the job has opened it.
fn wait_for_writer(input: &Path, stop: &Stop, quiet: bool) -> Result<Option<File>, JobError> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    if !fs::metadata(input).is_ok_and(|m| m.file_type().is_fifo()) {
        return Ok(None);
    }
    let fifo = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(input)
        .with_context(|| format!("cannot open {}", input.display()))?;
    let mut said = false;
    loop {
        let mut ready = libc::pollfd { fd: fifo.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, owned here, for a descriptor that outlives the call.
        let n = unsafe { libc::poll(&mut ready, 1, 100) };
        if n > 0 {
            return Ok(Some(fifo)); // bytes came, or a writer came and went: the job reads on
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(anyhow::Error::new(e).context(format!("waiting on {}", input.display())).into());
            }
        }
        if stop.is_stopped() {
            return Err(JobError::Cancelled);
        }
        if !said && !quiet {
            eprintln!("vpd: waiting for a writer on the named pipe {} (Ctrl-C stops)", input.display());
            said = true;
        }
    }
}

/// The job itself: opened (its checkpoint described once it exists), run, written.
fn process(
    cfg: &RunConfig,
    stop: Stop,
    writing: Writing,
    checkpoint: Option<&Checkpoint>,
) -> Result<Finished, JobError> {
    let opened = open_job(cfg, writing, None)?;
    if let Some(c) = checkpoint {
        c.describe()?;
    }
    let info = opened.info();
    let window = cfg.window.unwrap_or_else(|| JobOptions::default_window(cfg.threads, info.frame_bytes()));
    let job = JobContext { id: JobId::new(), chain: cfg.chain.clone(), stop, encoding: TransportEncoding::Raw };
    let threads = LocalTransport::new(cfg.threads, cfg.filter_env.clone())?;
    let tiling = tiling(cfg, &threads, (info.width, info.height));
    let remaining = info.frame_count.map(|n| n.saturating_sub(opened.resumed_at()));
    let progress = ProgressView::new(remaining, !cfg.quiet);
    let finished = opened.run(&job, tiling.transport(&threads), window, &progress);
    progress.finish();
    finished.map(|mut f| {
        f.summary.tiles = tiling.summary;
        f
    })
}

/// The most bytes of BGR a tile holds, its margin included, where `--tiles auto` picks the
/// grid: a task's frame of at most what a RabbitMQ message holds by default.
pub const TILE_BYTES: u64 = 8 << 20;

/// How `cfg`'s frames of `size` go to the filter `threads`: in tiles where `--tiles` asks for
/// them or the frames are large and the chain allows it; why not is said on stderr.
fn tiling<'a>(cfg: &RunConfig, threads: &'a LocalTransport, size: (u32, u32)) -> Tiling<'a> {
    // In-process tiles come back as filtered: lossless.
    let tiling =
        crate::transport::tiled::tiling(threads, cfg.tiles, &cfg.chain, (size, TILE_BYTES), true, &cfg.filter_env);
    if let (Some(why), false) = (tiling.why_not(), cfg.quiet) {
        eprintln!("vpd: frames are not cut into tiles: {why}");
    }
    tiling
}

/// `cfg`'s job, opened to write as `writing` says, live or not.
fn open_job(
    cfg: &RunConfig,
    writing: Writing,
    live: Option<crate::job::Live>,
) -> anyhow::Result<crate::job::OpenedJob> {
    crate::job::open(
        &cfg.input,
        &cfg.output,
        &cfg.chain,
        &cfg.output_options,
        Some(&cfg.filter_env.face_cascade),
        writing,
        live,
    )
}

/// A live input, read as it comes until `stop` (Ctrl-C) or its end: no checkpoint and no
/// resume; the job ends cleanly on the stop, writing what is in flight, so the output is whole.
/// The window is the filter threads and one more, the fewest frames that keep every thread
/// busy: a frame waits behind at most one other for its thread. Frames wait for dispatch at
/// most a quarter of `--max-latency` while a newer one is there.
fn run_live(cfg: &RunConfig, stop: Stop) -> Result<JobSummary, JobError> {
    if cfg.resume {
        return Err(JobError::Failed(anyhow::anyhow!("--resume does not apply to a live input")));
    }
    let stats = std::sync::Arc::new(crate::pipeline::live::LiveStats::default());
    let id = JobId::new();
    let recorded = match &cfg.record {
        Some(r) => Some(Recorded::open(cfg, r, &id)?),
        None => None,
    };
    let record = match (&cfg.record, &recorded) {
        (Some(r), Some(rec)) => Some(crate::job::Record {
            on: r.on,
            pre_roll: r.pre_roll,
            post_roll: r.post_roll,
            filter_env: cfg.filter_env.clone(),
            on_clip: rec.on_clip(),
        }),
        _ => None,
    };
    // A quarter of the latency allowed goes to waiting for dispatch (a burst of frames from
    // the network is taken in, a backlog is not); the rest is the filters' and the encoder's.
    let live = crate::job::Live { stop, stats: stats.clone(), max_wait: cfg.max_latency / 4, record };
    let finished = run_live_job(cfg, &id, stats, live);
    if let Some(rec) = &recorded {
        rec.ended(&finished);
    }
    finished
}

/// The live job `id` itself: opened, run, its latency checked.
fn run_live_job(
    cfg: &RunConfig,
    id: &JobId,
    stats: std::sync::Arc<crate::pipeline::live::LiveStats>,
    live: crate::job::Live,
) -> Result<JobSummary, JobError> {
    let opened = open_job(cfg, Writing::Direct, Some(live))?;
    let window =
        cfg.window.unwrap_or_else(|| std::num::NonZeroUsize::new(cfg.threads.get() + 1).expect("threads + 1 is not 0"));
    // The job itself is not stopped by the user's stop: that ends the input.
    let job =
        JobContext { id: id.clone(), chain: cfg.chain.clone(), stop: Stop::never(), encoding: TransportEncoding::Raw };
    let threads = LocalTransport::new(cfg.threads, cfg.filter_env.clone())?;
    let info = opened.info();
    let tiling = tiling(cfg, &threads, (info.width, info.height));
    let progress = crate::progress::LiveView::new(stats, !cfg.quiet);
    let finished = opened.run(&job, tiling.transport(&threads), window, &progress);
    progress.finish();
    let mut summary = finished?.summary;
    summary.tiles = tiling.summary;
    if let Some(live) = &summary.live
        && live.latency_ms.p99 > cfg.max_latency.as_secs_f64() * 1e3
    {
        warn!(
            p99_ms = live.latency_ms.p99,
            "latency went over --max-latency: the filter chain alone takes longer than that per frame here"
        );
    }
    Ok(summary)
}

/// A `--record-on` job in its job store: recorded as running when it starts, each clip as it
/// is written, and how it ended.
struct Recorded {
    store: std::sync::Arc<crate::store::Store>,
    id: JobId,
}

impl Recorded {
    fn open(cfg: &RunConfig, record: &crate::config::RecordConfig, id: &JobId) -> anyhow::Result<Recorded> {
        fs::create_dir_all(&record.state_dir)
            .with_context(|| format!("cannot create the state directory {}", record.state_dir.display()))?;
        let store = crate::store::Store::open(&record.state_dir)?;
        let spec = crate::protocol::job::JobSpec {
            chain: cfg.chain.clone(),
            output: cfg.output_options.clone(),
            container: cfg.output.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default(),
            transport: TransportEncoding::Raw,
            split: Default::default(),
            input_name: cfg.input.display().to_string(),
            input_bytes: 0,
            client: "local".into(),
            live: None,
        };
        let software = format!("vpd run {} --record-on", env!("CARGO_PKG_VERSION"));
        store.create(id, "local", &software, &spec)?;
        store.transition(id, crate::store::JobState::Running, None)?;
        Ok(Recorded { store: std::sync::Arc::new(store), id: id.clone() })
    }

    /// Records each clip as it is in place.
    fn on_clip(&self) -> crate::media::clips::OnClip {
        let (store, id) = (self.store.clone(), self.id.clone());
        Box::new(move |clip| store.add_clip(&id, clip))
    }

    /// Records how the job ended; a store that cannot be written is warned about, the job's
    /// own result stands.
    fn ended(&self, finished: &Result<JobSummary, JobError>) {
        use crate::store::JobState;
        let recorded = match finished {
            Ok(summary) => {
                let bytes = self.store.clips(&self.id).map(|c| c.iter().map(|c| c.bytes).sum()).unwrap_or(0);
                self.store.finished(&self.id, summary, bytes)
            }
            Err(JobError::Cancelled) => self.store.transition(&self.id, JobState::Cancelled, None),
            Err(JobError::Failed(e)) => self.store.transition(&self.id, JobState::Failed, Some(&format!("{e:#}"))),
        };
        if let Err(e) = recorded {
            warn!(store = %self.store.path().display(), "cannot record the job's end: {e:#}");
        }
    }
}

/// What a checkpoint is of: a resume must be of the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Identity {
    /// The layout of the checkpoint directory.
    version: u32,
    input: PathBuf,
    input_bytes: u64,
    input_mtime_ns: i128,
    chain: String,
    output: OutputOptions,
    segment_seconds: f64,
}

const CHECKPOINT_VERSION: u32 = 1;

/// A run's checkpoint directory.
struct Checkpoint {
    dir: PathBuf,
    identity: Identity,
    /// Segments committed by an interrupted run being resumed.
    committed: Vec<SegmentRecord>,
    /// The directory's lock, held while the run lasts: a second run writing the same output
    /// is refused rather than deleting this one's segments.
    _lock: File,
}

impl Checkpoint {
    /// The checkpoint for `cfg`'s run: none when the input or the output is a stream or a
    /// device (such a run cannot be resumed, and `/dev` is no place for its segments). Reads what an interrupted run left when resuming; removes it
    /// otherwise.
    fn for_run(cfg: &RunConfig) -> anyhow::Result<Option<Checkpoint>> {
        let streamed = cfg.input == Path::new(STDIO)
            || cfg.output == Path::new(STDIO)
            || fs::metadata(&cfg.input).is_ok_and(|m| !m.is_file())
            || crate::media::is_stream_target(&cfg.output);
        if streamed {
            if cfg.resume {
                bail!("--resume needs a file to read and a file to write, not a pipe");
            }
            return Ok(None);
        }
        let Some(dir) = checkpoint_dir(&cfg.output) else { return Ok(None) };
        // An output whose directory is missing fails as the job opens, and says so: nothing
        // is made for it here.
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() || !writable(parent) {
            return Ok(None);
        }
        let identity = Identity::of(cfg);
        let mut committed = Vec::new();
        let left_behind = dir.exists();
        let lock = lock_checkpoint(&dir, &cfg.output)?;
        if left_behind {
            let left = Identity::read(&dir);
            if !cfg.resume {
                warn!("replacing what an interrupted run left in {} (--resume continues it instead)", dir.display());
                // Emptied, not removed: the lock is the directory's.
                for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                    let path = entry?.path();
                    let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                    removed.with_context(|| format!("removing {}", path.display()))?;
                }
            } else if left.as_ref() != Some(&identity) {
                bail!(
                    "cannot resume: {} is of a run with another input, chain or output options; run without --resume to start afresh",
                    dir.display()
                );
            } else {
                committed = read_segments(&dir)?;
            }
        } else if cfg.resume && !cfg.quiet {
            eprintln!("vpd: nothing to resume for {}; starting from the beginning", cfg.output.display());
        }
        Ok(Some(Checkpoint { dir, identity, committed, _lock: lock }))
    }

    /// How the job writes: into segments here, each recorded as it is committed.
    fn writing(&self, cfg: &RunConfig) -> Writing {
        let log = self.dir.join("segments.jsonl");
        let dir = self.dir.clone();
        Writing::Segmented {
            dir: self.dir.clone(),
            seconds: cfg.segment_seconds,
            committed: self.committed.clone(),
            on_commit: Box::new(move |record| {
                let mut file = OpenOptions::new().create(true).append(true).open(&log)?;
                writeln!(file, "{}", serde_json::to_string(record)?)?;
                file.sync_all().with_context(|| format!("recording a segment in {}", dir.display()))
            }),
        }
    }

    /// Writes `job.json` (the job opened, so its directory exists).
    fn describe(&self) -> anyhow::Result<()> {
        let path = self.dir.join("job.json");
        if path.exists() {
            return Ok(());
        }
        let mut file = File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        file.write_all(serde_json::to_string_pretty(&self.identity)?.as_bytes())?;
        file.sync_all()?;
        Ok(())
    }

    fn remove(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    /// After a failure or a cancel: keeps committed segments for `--resume` and says what was
    /// kept, where, and how to go on; removes the directory when nothing was committed.
    fn keep_or_remove(&self) -> Option<String> {
        let committed = read_segments(&self.dir).unwrap_or_default();
        let frames: u64 = committed.iter().map(|r| r.frames).sum();
        if frames == 0 {
            self.remove();
            return None;
        }
        let bytes: u64 = fs::read_dir(&self.dir)
            .map(|entries| entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0);
        Some(format!(
            "{frames} frames are committed in {} ({:.1} MB); run again with --resume to continue from there",
            self.dir.display(),
            bytes as f64 / 1e6
        ))
    }
}

/// Whether this process may create files in `dir` (a read-only file system says no even to
/// root).
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: access reads the NUL-terminated path, which outlives the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

/// Creates and locks the checkpoint directory `dir` of `output`, or says that another run is
/// writing that output.
fn lock_checkpoint(dir: &Path, output: &Path) -> anyhow::Result<File> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::MetadataExt as _;
    loop {
        match fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("cannot create {}", dir.display()));
            }
            _ => {}
        }
        let file = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                bail!(
                    "another vpd run is writing {} (it holds {}); wait for it to end, or write elsewhere",
                    output.display(),
                    dir.display()
                );
            }
            return Err(e).with_context(|| format!("locking {}", dir.display()));
        }
        // The run that held it may have removed it as it ended: lock the new one instead.
        if file.metadata()?.nlink() > 0 {
            return Ok(file);
        }
    }
}

impl Identity {
    fn of(cfg: &RunConfig) -> Identity {
        let meta = fs::metadata(&cfg.input).ok();
        Identity {
            version: CHECKPOINT_VERSION,
            input: fs::canonicalize(&cfg.input).unwrap_or_else(|_| cfg.input.clone()),
            input_bytes: meta.as_ref().map_or(0, |m| m.len()),
            input_mtime_ns: meta.as_ref().map_or(0, |m| m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128),
            chain: cfg.chain.to_string(),
            output: cfg.output_options.clone(),
            segment_seconds: cfg.segment_seconds,
        }
    }

    fn read(dir: &Path) -> Option<Identity> {
        serde_json::from_slice(&fs::read(dir.join("job.json")).ok()?).ok()
    }
}

/// Whether `e` says the disk is full.
fn is_no_space(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(cause.downcast_ref::<MediaError>(), Some(MediaError::NoSpace { .. }))
            || cause.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::ENOSPC)
    })
}

/// `.NAME.vpd-resume` beside `output`.
fn checkpoint_dir(output: &Path) -> Option<PathBuf> {
    let name = output.file_name()?.to_string_lossy().into_owned();
    Some(output.with_file_name(format!(".{name}.vpd-resume")))
}

/// The segments a checkpoint records, in order from 0, each with its file: a torn last line
/// (a crash while recording) and a record whose file is missing end the list.
fn read_segments(dir: &Path) -> anyhow::Result<Vec<SegmentRecord>> {
    let file = match File::open(dir.join("segments.jsonl")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut segments = Vec::new();
    for line in BufReader::new(file).lines() {
        let Ok(record) = serde_json::from_str::<SegmentRecord>(&line?) else { break };
        if record.number != segments.len() as u64 || !segment_path(dir, record.number).is_file() {
            break;
        }
        segments.push(record);
    }
    Ok(segments)
}

/// Runs each job in turn (each already uses every core). An output already there is
/// complete (outputs appear only once whole) and is skipped without being touched; a bad
/// input fails its row and the next goes on; a stop cancels the job running and leaves the rest
/// not started. `on_row` hears each row as it ends.
pub fn batch(jobs: &[RunConfig], stop: &Stop, mut on_row: impl FnMut(&BatchRow)) -> BatchReport {
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for cfg in jobs {
        let input = cfg.input.display().to_string();
        let row = if stop.is_stopped() {
            BatchRow::new(input, &cfg.output, "not started", None)
        } else if BatchRow::is_complete(&cfg.output) {
            BatchRow::skipped(input, &cfg.output)
        } else {
            match run(cfg, stop.clone()) {
                Ok(s) => BatchRow::done(input, &cfg.output, &s),
                Err(JobError::Cancelled) => BatchRow::new(input, &cfg.output, "cancelled", None),
                Err(JobError::Failed(e)) => BatchRow::new(input, &cfg.output, "failed", Some(format!("{e:#}"))),
            }
        };
        on_row(&row);
        rows.push(row);
    }
    BatchReport::new(rows, started.elapsed().as_secs_f64())
}
