//! Everything vpd draws on the terminal: the progress bar and the end-of-job summary.
//! Other modules report through [`Observer`] and return [`JobSummary`] values.

use std::io::{self, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::metrics::{JobSummary, Percentiles, Progress};
use crate::pipeline::Observer;
use crate::protocol::job::JobRecord;

/// A progress bar on stderr: frames done/total, fps, ETA. Hidden when stderr is not a terminal.
pub struct ProgressView(ProgressBar);

impl ProgressView {
    /// A bar for `total` frames (a spinner when unknown); `visible: false` draws nothing.
    pub fn new(total: Option<u64>, visible: bool) -> Self {
        let target = if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(total, target);
        let template = if total.is_some() {
            "{spinner:.green} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} frames {fps:.bold} ETA {eta} {msg}"
        } else {
            "{spinner:.green} [{elapsed_precise}] {pos} frames {fps:.bold} {msg}"
        };
        // The templates above are fixed strings; a typo in them is a bug caught by any run.
        let style = ProgressStyle::with_template(template).expect("valid progress template");
        let style = style
            .with_key("fps", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1} fps", s.per_sec());
            })
            .progress_chars("=> ");
        bar.set_style(style);
        ProgressView(bar)
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl ProgressView {
    /// Starts the bar at `done` frames (a job followed again, or resumed): its rate counts from here.
    pub fn start_at(&self, done: u64) {
        self.0.set_position(done);
        self.0.reset_eta();
    }

    /// Prints `line` on stderr, above the bar when there is one.
    pub fn note(&self, line: &str) {
        self.0.suspend(|| eprintln!("{line}"));
    }

    /// Shows `p`.
    pub fn update(&self, p: &Progress) {
        self.0.set_position(p.done);
        if p.failed > 0 {
            self.0.set_message(format!("({} failed)", p.failed));
        }
    }
}

impl Observer for ProgressView {
    fn on_progress(&self, p: &Progress) {
        self.update(p);
    }
}

/// A live job's line on stderr: frames, fps, latency from read to written, drops and
/// reconnects, instead of a bar and an ETA. Hidden when stderr is not a terminal.
pub struct LiveView {
    bar: ProgressView,
    stats: std::sync::Arc<crate::pipeline::live::LiveStats>,
}

impl LiveView {
    /// A line fed from `stats`; `visible: false` draws nothing.
    pub fn new(stats: std::sync::Arc<crate::pipeline::live::LiveStats>, visible: bool) -> Self {
        LiveView { bar: ProgressView::new(None, visible), stats }
    }

    /// Removes the line from the terminal.
    pub fn finish(&self) {
        self.bar.finish();
    }
}

impl Observer for LiveView {
    fn on_progress(&self, p: &Progress) {
        self.bar.0.set_position(p.done);
        if p.done % 8 == 0 {
            self.bar.0.set_message(live_line(&self.stats.summary(), 0));
        }
    }
}

impl ProgressView {
    /// A live job's numbers, as a server reports them: frames, and the live line (its client's
    /// own input losses, `reconnects`, added).
    pub fn update_live(&self, p: &Progress, reconnects: u64) {
        self.0.set_position(p.done);
        if let Some(live) = &p.live {
            self.0.set_message(live_line(live, reconnects));
        }
    }
}

/// The live part of a progress line: latency, drops, input losses.
fn live_line(live: &crate::metrics::LiveSummary, more_reconnects: u64) -> String {
    let mut message = format!(
        "live · latency p50 {:.0} ms p99 {:.0} ms · {} dropped",
        live.latency_ms.p50, live.latency_ms.p99, live.dropped
    );
    let reconnects = live.reconnects + more_reconnects;
    if reconnects > 0 {
        message.push_str(&format!(" · input lost and back {reconnects}×"));
    }
    message
}

/// Prints `summary`: as text on stderr unless `quiet`, as one JSON line on stdout if `json`.
pub fn print_summary(summary: &JobSummary, quiet: bool, json: bool) -> io::Result<()> {
    if !quiet {
        let mut err = io::stderr().lock();
        write_human(&mut err, summary)?;
    }
    if json {
        let mut out = io::stdout().lock();
        let line = serde_json::to_string(summary).map_err(io::Error::other)?;
        // A reader that closed the pipe early (`| head`) is not an error of ours.
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            other => other?,
        }
    }
    Ok(())
}

fn write_human(w: &mut impl Write, s: &JobSummary) -> io::Result<()> {
    writeln!(
        w,
        "{}: {} frames, {} failed, {:.2} s, {:.1} fps ({}x{} @ {:.2} fps, {})",
        s.output, s.frames, s.failed_frames, s.wall_seconds, s.fps, s.width, s.height, s.video_fps, s.codec
    )?;
    if let (Some(split), Some(why)) = (&s.split, &s.split_why) {
        writeln!(w, "  split            {split} ({why})")?;
    }
    if s.retries > 0 || s.duplicates > 0 {
        writeln!(w, "  retries {}, duplicate results dropped {}", s.retries, s.duplicates)?;
    }
    writeln!(w, "  filter latency   {}", percentiles(&s.filter_latency_ms))?;
    writeln!(w, "  frame latency    {}  (dispatch to result)", percentiles(&s.latency_ms))?;
    if let Some(live) = &s.live {
        writeln!(w, "  live latency     {}  (packet read to encoded packet written)", percentiles(&live.latency_ms))?;
        writeln!(w, "  of which encode  {}", percentiles(&live.encode_ms))?;
        writeln!(
            w,
            "  live             {} frames read, {} dropped to keep up, input lost and back {} times",
            live.read, live.dropped, live.reconnects
        )?;
        if let Some(e2e) = &live.end_to_end_ms {
            writeln!(w, "  end to end       {}  (read by this client to written by it)", percentiles(e2e))?;
        }
        if let Some(clips) = live.clips {
            writeln!(w, "  clips            {clips} written (--record-on)")?;
        }
    }
    if s.wire_bytes_sent + s.wire_bytes_received > 0 {
        let per_frame = |b: u64| b as f64 / s.frames.max(1) as f64 / 1e3;
        writeln!(
            w,
            "  on the wire      {:.1} kB/frame to workers, {:.1} kB/frame back",
            per_frame(s.wire_bytes_sent),
            per_frame(s.wire_bytes_received)
        )?;
    }
    let workers: Vec<String> = s.workers.iter().map(|(id, n)| format!("{id} {n}")).collect();
    writeln!(w, "  frames per worker  {}", workers.join(", "))
}

fn percentiles(p: &Percentiles) -> String {
    format!("p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms", p.p50, p.p95, p.p99)
}

/// One batch row as it ends, on stderr.
pub fn print_batch_row(row: &crate::batch::BatchRow) {
    let line = match row.outcome {
        "done" => format!(
            "done     {} -> {}: {} frames, {:.1} fps",
            row.input,
            row.output,
            row.frames.unwrap_or(0),
            row.fps.unwrap_or(0.0)
        ),
        "skipped" => format!("skipped  {} -> {}: already complete", row.input, row.output),
        "failed" => format!("failed   {}: {}", row.input, row.error.as_deref().unwrap_or("")),
        other => format!("{other:<8} {}", row.input),
    };
    eprintln!("{line}");
}

/// A batch's consolidated table (on stderr), or its JSON (on stdout).
pub fn print_batch(report: &crate::batch::BatchReport, quiet: bool, json: bool) -> io::Result<()> {
    if json {
        let mut out = io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(report).map_err(io::Error::other)?)?;
    }
    if quiet {
        return Ok(());
    }
    let mut err = io::stderr().lock();
    let width = report.files.iter().map(|r| r.input.len()).max().unwrap_or(4).max(4);
    writeln!(
        err,
        "{:<width$}  {:<11} {:>7} {:>7} {:>6} {:>12}  error",
        "file", "outcome", "frames", "fps", "failed", "bytes"
    )?;
    let dash = || "-".to_string();
    for r in &report.files {
        writeln!(
            err,
            "{:<width$}  {:<11} {:>7} {:>7} {:>6} {:>12}  {}",
            r.input,
            r.outcome,
            r.frames.map_or_else(dash, |n| n.to_string()),
            r.fps.map_or_else(dash, |f| format!("{f:.1}")),
            r.failed_frames.map_or_else(dash, |n| n.to_string()),
            r.output_bytes.map_or_else(dash, |n| n.to_string()),
            r.error.as_deref().unwrap_or("")
        )?;
    }
    writeln!(
        err,
        "{} files: {} done, {} skipped, {} failed, {} cancelled; {} frames in {:.1} s",
        report.files.len(),
        report.done,
        report.skipped,
        report.failed,
        report.cancelled,
        report.frames,
        report.wall_seconds
    )
}

/// `vpd presets`: one line per preset, its chain, and where it comes from.
pub fn print_presets(out: &mut impl Write, presets: &crate::filters::presets::Presets) -> io::Result<()> {
    use crate::filters::presets::Origin;
    let width = presets.iter().map(|(name, _, _)| name.len()).max().unwrap_or(0).max(6);
    writeln!(out, "{:<width$}  {:<8}  chain", "preset", "from")?;
    for (name, chain, origin) in presets.iter() {
        let from = match origin {
            Origin::BuiltIn => "built-in",
            Origin::Config => "config",
        };
        writeln!(out, "{name:<width$}  {from:<8}  {chain}")?;
    }
    Ok(())
}

/// `vpd jobs`: one line per job, newest first.
pub fn print_jobs(out: &mut impl Write, jobs: &[JobRecord]) -> io::Result<()> {
    writeln!(
        out,
        "{:<14} {:<10} {:>7} {:>7} {:>8}  {:<19}  filters",
        "job", "state", "frames", "fps", "took", "started (UTC)"
    )?;
    for j in jobs {
        let frames = j.frames.map_or_else(|| "-".into(), |n| n.to_string());
        let fps = j.summary.as_ref().map_or_else(|| "-".into(), |s| format!("{:.1}", s.fps));
        let took = format!("{:.1} s", j.updated_ms.saturating_sub(j.created_ms) as f64 / 1000.0);
        writeln!(
            out,
            "{:<14} {:<10} {:>7} {:>7} {:>8}  {:<19}  {}",
            j.id,
            j.state.as_str(),
            frames,
            fps,
            took,
            utc(j.created_ms),
            j.spec.chain
        )?;
    }
    Ok(())
}

/// `vpd jobs show`: everything recorded of one job.
pub fn print_job(out: &mut impl Write, j: &JobRecord) -> io::Result<()> {
    writeln!(out, "job       {}", j.id)?;
    writeln!(out, "state     {}", j.state.as_str())?;
    writeln!(out, "client    {} ({}) from {}", j.spec.client, j.software, j.peer)?;
    let sha = j.input_sha256.as_deref().unwrap_or("-");
    writeln!(out, "input     {} ({} bytes, sha256 {sha})", j.spec.input_name, j.spec.input_bytes)?;
    writeln!(out, "filters   {}", j.spec.chain)?;
    let options = serde_json::to_string(&j.spec.output).unwrap_or_default();
    writeln!(out, "output    .{} {options}", j.spec.container)?;
    match (j.output_bytes, j.removed_ms) {
        (Some(bytes), None) => writeln!(out, "result    {bytes} bytes, kept")?,
        (Some(bytes), Some(at)) => writeln!(out, "result    {bytes} bytes, removed {}", utc(at))?,
        (None, Some(at)) => writeln!(out, "upload    removed {}", utc(at))?,
        (None, None) => {}
    }
    if j.committed_frames > 0 {
        writeln!(out, "committed {} frames", j.committed_frames)?;
    }
    if j.resumes > 0 {
        writeln!(out, "resumed   {} time(s) after a restart", j.resumes)?;
    }
    if let Some(of) = &j.rerun_of {
        writeln!(out, "rerun of  {of}")?;
    }
    for t in &j.transitions {
        writeln!(out, "  {}  {}", utc(t.at_ms), t.state.as_str())?;
    }
    if let Some(e) = &j.error {
        writeln!(out, "error     {e}")?;
    }
    if !j.clips.is_empty() {
        let bytes: u64 = j.clips.iter().map(|c| c.bytes).sum();
        writeln!(out, "clips     {} ({bytes} bytes)", j.clips.len())?;
        for c in &j.clips {
            writeln!(
                out,
                "  {}  {:>7.1} s  {:>6} frames  {:>11} bytes  {}",
                utc(c.started_ms),
                c.seconds,
                c.frames,
                c.bytes,
                c.path.display()
            )?;
        }
    }
    if let Some(s) = &j.summary {
        write_human(out, s)?;
    }
    Ok(())
}

/// `2026-11-29 04:05:06` for milliseconds since the Unix epoch, in UTC.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_925_106_000), "2026-11-29 04:05:06");
        assert_eq!(utc(951_868_799_000), "2000-02-29 23:59:59", "a leap day");
    }
}
