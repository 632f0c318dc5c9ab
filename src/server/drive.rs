//! A job's driver: waits for a job slot, opens the upload with the segments the store records
//! as committed (none at first), runs the pipeline, and records each segment as it commits.
//! A pause stops the pipeline (nothing in flight, the slot given back) and a resume opens it
//! again from its committed segments, like a restarted server does for every job that was
//! queued, running or paused when the last one stopped. A shutdown stops drivers without
//! recording an end: the next start resumes them.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, warn};

use super::jobs::{End, LiveJob, Spec, Status, Video};
use super::observer::JobObserver;
use super::refusal::Scrub;
use super::shared::Shared;
use crate::cancel::Stop;
use crate::job::{Finished, Writing};
use crate::media::{SegmentRecord, segment_path};
use crate::pipeline::{JobError, Progress};
use crate::protocol::event::JobEvent;
use crate::protocol::jobs::JobState;
use crate::protocol::message::ErrorCode;
use crate::transport::JobContext;

/// Starts driving the job `spec`, whose upload is in place; `paused` holds it until it
/// is resumed. Returns it.
pub(super) fn launch(shared: &Arc<Shared>, spec: Spec, paused: bool) -> Arc<LiveJob> {
    let state = if paused { JobState::Paused } else { JobState::Queued };
    let status = Status { state, video: None, progress: Progress::default(), end: None };
    let job = Arc::new(LiveJob {
        client: spec.client.clone(),
        status: watch::Sender::new(status),
        cancel: CancellationToken::new(),
        pause: watch::Sender::new(paused),
    });
    let span = tracing::info_span!("drive", job = %spec.id);
    let id = spec.id.clone();
    shared.jobs.start(&id, job.clone(), drive(shared.clone(), job.clone(), spec).instrument(span));
    job
}

/// Drives one job to its end (or to the server's shutdown), then records how it ended.
pub(super) async fn drive(shared: Arc<Shared>, job: Arc<LiveJob>, spec: Spec) {
    let id = spec.id.clone();
    let end = drive_to_end(&shared, &job, &spec).await;
    let recorded = match &end {
        End::Done(summary) => {
            let output_bytes = std::fs::metadata(shared.jobs.result_of(&id, &spec.container)).map_or(0, |m| m.len());
            shared.store.finished(&id, summary, output_bytes)
        }
        End::Failed(_, message) => shared.store.transition(&id, JobState::Failed, Some(message)),
        End::Cancelled => shared.store.transition(&id, JobState::Cancelled, None),
        End::Interrupted => Ok(()),
    };
    if let Err(e) = recorded {
        warn!(error = %format!("{e:#}"), "cannot record the job's end in the job store");
    }
    if matches!(end, End::Done(_)) {
        let _ = std::fs::remove_dir_all(shared.jobs.segments_of(&id));
        let _ = shared.store.drop_segments(&id);
    }
    // The record first, then the live entry: a connection that finds no live job finds its end
    // in the store.
    job.status.send_modify(|s| s.end = Some(end));
    shared.jobs.forget(&id);
    let _ = tokio::task::spawn_blocking(move || shared.jobs.expire(&shared.store)).await;
}

/// The driver's loop: wait for a slot (or a resume), run, and again after a pause.
pub(super) async fn drive_to_end(shared: &Arc<Shared>, job: &LiveJob, spec: &Spec) -> End {
    let id = &spec.id;
    let shutdown = shared.shutdown.clone();
    let mut pause = job.pause.subscribe();
    let pause = &mut pause;
    loop {
        // Paused: no slot, nothing in flight, until resumed or cancelled.
        if *pause.borrow_and_update() {
            set_state(shared, job, id, JobState::Paused);
            tokio::select! {
                _ = until(pause, false) => {}
                _ = job.cancel.cancelled() => return cancelled(shared, id).await,
                _ = shutdown.cancelled() => return End::Interrupted,
            }
        }
        set_state(shared, job, id, JobState::Queued);
        let slot = tokio::select! {
            slot = shared.job_slots.acquire() => match slot {
                Ok(slot) => slot,
                Err(_) => return End::Interrupted,
            },
            _ = until(pause, true) => continue,
            _ = job.cancel.cancelled() => return cancelled(shared, id).await,
            _ = shutdown.cancelled() => return End::Interrupted,
        };
        set_state(shared, job, id, JobState::Running);
        let outcome = run_once(shared, job, spec, pause).await;
        drop(slot);
        match outcome {
            Ok(finished) => return finished,
            Err(Stopped::Paused) => {
                info!("paused: frames after the last committed segment are done again on resume");
                continue;
            }
            Err(Stopped::Cancelled) if shutdown.is_cancelled() => return End::Interrupted,
            Err(Stopped::Cancelled) => return cancelled(shared, id).await,
        }
    }
}

/// A cancelled job's end, announced: workers drop its remaining tasks, dashboards show it.
pub(super) async fn cancelled(shared: &Shared, id: &str) -> End {
    shared.publish(JobEvent::Cancelled { job: id.to_string() }).await;
    End::Cancelled
}

/// Returns once the pause flag is `value`.
pub(super) async fn until(pause: &mut watch::Receiver<bool>, value: bool) {
    let _ = pause.wait_for(|p| *p == value).await;
}

/// Moves the job to `state`, in its status and in the store.
pub(super) fn set_state(shared: &Shared, job: &LiveJob, id: &str, state: JobState) {
    let mut changed = false;
    job.status.send_if_modified(|s| {
        changed = s.state != state;
        s.state = state;
        changed
    });
    // A resumed job's record may already say so (running when the server died).
    let recorded = shared.store.get(id).ok().flatten().map(|r| r.state);
    if recorded != Some(state)
        && let Err(e) = shared.store.transition(id, state, None)
    {
        warn!(error = %format!("{e:#}"), "cannot record a state in the job store");
    }
}

/// Why a run stopped early.
pub(super) enum Stopped {
    Paused,
    Cancelled,
}

/// Opens the job from its committed segments and runs it until it ends or is paused.
pub(super) async fn run_once(
    shared: &Arc<Shared>,
    job: &LiveJob,
    spec: &Spec,
    pause: &mut watch::Receiver<bool>,
) -> Result<End, Stopped> {
    let id = spec.id.clone();
    let jobs = &shared.jobs;
    let (input, result, dir) =
        (jobs.input_of(&id, &spec.input_name), jobs.result_of(&id, &spec.container), jobs.segments_of(&id));
    let scrub = Scrub::new(jobs.dir(), &input, &spec.input_name, &result);
    let failed = |code: ErrorCode, e: &anyhow::Error| Ok(End::Failed(code, scrub.text(&format!("{e:#}"))));
    // Committed segments whose files are there, in order from 0.
    let committed: Vec<SegmentRecord> = match shared.store.segments(&id) {
        Ok(all) => all
            .into_iter()
            .enumerate()
            .take_while(|(i, r)| r.number == *i as u64 && segment_path(&dir, r.number).is_file())
            .map(|(_, r)| r)
            .collect(),
        Err(e) => return failed(ErrorCode::Internal, &e),
    };
    let on_commit = {
        let (shared, id) = (shared.clone(), id.clone());
        Box::new(move |r: &SegmentRecord| shared.store.commit_segment(&id, r))
    };
    let writing = Writing::Segmented { dir, seconds: jobs.segment_seconds(), committed, on_commit };
    let cascade = shared.local_face_cascade.clone();
    let (chain, options) = (spec.chain.clone(), spec.output.clone());
    let span = tracing::Span::current();
    let opened = {
        let (input, result) = (input.clone(), result.clone());
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| crate::job::open(&input, &result, &chain, &options, cascade.as_deref(), writing))
        })
        .await
    };
    let opened = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return failed(ErrorCode::BadInput, &e),
        Err(e) => return failed(ErrorCode::Internal, &anyhow::anyhow!("{e}")),
    };
    let info = opened.info();
    let resumed = opened.resumed_at();
    if resumed > 0 {
        info!(frame = resumed, "resuming after the committed segments");
    }
    let video = Video { frames: info.frame_count, width: info.width as u32, height: info.height as u32, fps: info.fps };
    job.status.send_modify(|s| {
        s.video = Some(video);
        s.progress = Progress { done: resumed, total: info.frame_count, ..Progress::default() };
    });
    // Events and metrics count the frames this process works on: what remains.
    let remaining = info.frame_count.map(|n| n.saturating_sub(resumed));
    shared
        .publish(JobEvent::Started {
            job: id.clone(),
            filters: spec.chain.to_string(),
            frames: remaining,
            width: video.width,
            height: video.height,
            fps: video.fps,
        })
        .await;

    let job_token = CancellationToken::new();
    let ctx = JobContext {
        id: id.clone(),
        chain: spec.chain.clone(),
        stop: Stop::on_cancel(job_token.clone(), &tokio::runtime::Handle::current()),
        encoding: spec.transport,
    };
    let window = shared.window(info.frame_bytes());
    let (progress_tx, mut progress_rx) = watch::channel(Progress { total: remaining, ..Progress::default() });
    let (thumb_tx, mut thumb_rx) = mpsc::channel(3);
    let observer = JobObserver::new(progress_tx, thumb_tx, shared.clients.pace(&spec.client));
    let transport = shared.transport.clone();
    let span = tracing::Span::current();
    let first_frame = Instant::now();
    let mut running =
        tokio::task::spawn_blocking(move || span.in_scope(|| opened.run(&ctx, &*transport, window, &observer)));
    let mut first = true;
    let mut paused = false;
    let outcome = loop {
        tokio::select! {
            finished = &mut running => break finished,
            changed = progress_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let p = progress_rx.borrow_and_update().clone();
                if first && p.done > 0 {
                    first = false;
                    info!(frame = resumed, ms = first_frame.elapsed().as_millis() as u64, "first new frame");
                }
                job.status.send_modify(|s| {
                    s.progress = Progress { done: p.done + resumed, total: info.frame_count, ..p.clone() };
                });
                shared.publish(JobEvent::Progress { job: id.clone(), progress: p }).await;
            }
            Some((index, jpeg)) = thumb_rx.recv() => {
                shared.publish(JobEvent::Frame { job: id.clone(), index, jpeg }).await;
            }
            _ = until(pause, true), if !paused => {
                paused = true;
                job_token.cancel();
            }
            // Once each: a cancelled token stays ready, and a branch that is always ready would
            // spin this task without ever yielding its worker thread (and the timers it drives)
            // while the pipeline winds down.
            _ = job.cancel.cancelled(), if !job_token.is_cancelled() => job_token.cancel(),
            _ = shared.shutdown.cancelled(), if !job_token.is_cancelled() => job_token.cancel(),
        }
    };
    job_token.cancel(); // ends the stop's waiting task
    // The job's frames, encoder and decoder are gone: their memory goes back to the system.
    let _ = tokio::task::spawn_blocking(crate::job::release_freed_memory).await;
    let Finished { mut summary, latency } = match outcome {
        Ok(Ok(finished)) => finished,
        Ok(Err(JobError::Cancelled)) if paused && !job.cancel.is_cancelled() && !shared.shutdown.is_cancelled() => {
            // Nothing of it is in flight any more: the dashboards say so.
            let mut p = progress_rx.borrow().clone();
            p.in_flight = 0;
            shared.publish(JobEvent::Progress { job: id.clone(), progress: p.clone() }).await;
            shared.publish(JobEvent::Paused { job: id.clone() }).await;
            job.status.send_modify(|s| s.progress = Progress { done: p.done + resumed, total: info.frame_count, ..p });
            return Err(Stopped::Paused);
        }
        Ok(Err(JobError::Cancelled)) => return Err(Stopped::Cancelled),
        Ok(Err(JobError::Failed(e))) => {
            let message = scrub.text(&format!("{e:#}"));
            shared.publish(JobEvent::Failed { job: id.clone(), error: message.clone() }).await;
            // A truncation shows only once the input is decoded to its end: still the input's fault.
            let input =
                e.chain().any(|c| c.downcast_ref::<crate::media::MediaError>().is_some_and(|m| m.is_bad_input()));
            return Ok(End::Failed(if input { ErrorCode::BadInput } else { ErrorCode::JobFailed }, message));
        }
        Err(e) => return failed(ErrorCode::Internal, &anyhow::anyhow!("{e}")),
    };
    // The record names the client's file, never the server's paths.
    summary.input = spec.input_name.clone();
    summary.output = result.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    while let Ok((index, jpeg)) = thumb_rx.try_recv() {
        shared.publish(JobEvent::Frame { job: id.clone(), index, jpeg }).await;
    }
    let mut last = summary.progress();
    last.done = last.done.saturating_sub(resumed);
    last.total = remaining;
    shared.publish(JobEvent::Progress { job: id.clone(), progress: last }).await;
    shared.publish(JobEvent::Done { job: id.clone(), summary: Box::new(summary.clone()), latency }).await;
    job.status.send_modify(|s| s.progress = summary.progress());
    info!(frames = summary.frames, fps = format!("{:.1}", summary.fps), "job done");
    Ok(End::Done(Box::new(summary)))
}
