//! Job controls: cancel, pause, resume and rerun, as `vpd jobs` asks them.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::clients::{Client, RateLimited};
use super::drive::launch;
use super::jobs::{Spec, new_job_id};
use super::refusal::{Refusal, internal_error, refuse};
use super::shared::Shared;
use crate::protocol::jobs::JobRecord;
use crate::protocol::message::ErrorCode;
use crate::store::JobState;

/// When a client at its limit of jobs at once is told to try again (its jobs' ends are not
/// known in advance; a client that polls at this pace loses little).
pub(super) const JOBS_LIMIT_RETRY: Duration = Duration::from_secs(5);

/// A job control: what `vpd jobs cancel|pause|resume|rerun` asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Control {
    Cancel,
    Pause,
    Resume,
    Rerun,
}

/// Applies `control` to `job`; returns the job it concerns (a rerun's new one) and its state.
pub(super) fn apply(
    shared: &Arc<Shared>,
    (peer, client, who): (&str, &str, &Client),
    job: &str,
    control: Control,
) -> Result<(String, JobState), Refusal> {
    let live = shared.jobs.get(job);
    let record = match &live {
        Some(_) => None,
        None => Some(
            shared
                .store
                .get(job)
                .map_err(internal_error)?
                .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no job {job} on this server")))?,
        ),
    };
    let ended = |r: &JobRecord| refuse(ErrorCode::Conflict, format!("job {job} has ended ({})", r.state.as_str()));
    match (control, live, record) {
        (Control::Cancel, Some(live), _) => {
            info!(%job, "cancelling the job, as asked");
            live.cancel();
            Ok((job.to_string(), JobState::Cancelled))
        }
        (Control::Pause, Some(live), _) => {
            info!(%job, "pausing the job, as asked");
            live.set_paused(true);
            Ok((job.to_string(), JobState::Paused))
        }
        (Control::Resume, Some(live), _) => {
            info!(%job, "resuming the job, as asked");
            live.set_paused(false);
            let state = match live.state() {
                JobState::Paused => JobState::Queued,
                other => other,
            };
            Ok((job.to_string(), state))
        }
        (Control::Rerun, Some(live), _) => Err(refuse(
            ErrorCode::Conflict,
            format!("job {job} is {}; rerun it once it has ended", live.state().as_str()),
        )),
        (Control::Rerun, None, Some(r)) => rerun(shared, (peer, client, who), &r).map(|id| (id, JobState::Queued)),
        // A failed job (a full disk, a lost cascade) goes on from its committed segments.
        (Control::Resume, None, Some(r)) if r.state == JobState::Failed => {
            within_jobs_limit(shared, who)?;
            retry(shared, &r).map(|()| (job.to_string(), JobState::Queued))
        }
        (_, None, Some(r)) => Err(ended(&r)),
        (_, None, None) => Err(refuse(ErrorCode::Internal, "a job neither live nor recorded")),
    }
}

/// Whether `who` may start one more job: its own limit of jobs at once (the others' jobs are not
/// counted against it, nor its against them).
pub(super) fn within_jobs_limit(shared: &Shared, who: &Client) -> Result<(), Refusal> {
    match who.limits.jobs {
        Some(most) if shared.jobs.live_count_of(&who.name) >= most.get() => Err(RateLimited {
            message: format!("{} may have {most} jobs queued or running at once", who.name),
            retry_after: Some(JOBS_LIMIT_RETRY),
        }
        .into()),
        _ => Ok(()),
    }
}

/// Starts a failed job again from its committed segments, on its kept upload.
pub(super) fn retry(shared: &Arc<Shared>, r: &JobRecord) -> Result<(), Refusal> {
    if r.removed_ms.is_some() || !shared.jobs.input_of(&r.id, &r.input_name).is_file() {
        return Err(refuse(ErrorCode::Expired, format!("job {}'s upload was removed; submit it again", r.id)));
    }
    let spec = Spec::of(r).map_err(internal_error)?;
    info!(job = %r.id, committed_frames = r.committed_frames, "resuming a failed job, as asked");
    shared.store.transition(&r.id, JobState::Queued, None).map_err(internal_error)?;
    launch(shared, spec, false);
    Ok(())
}

/// Starts a new job on `of`'s kept upload, with its chain and options; returns its id.
pub(super) fn rerun(
    shared: &Arc<Shared>,
    (peer, client, who): (&str, &str, &Client),
    of: &JobRecord,
) -> Result<String, Refusal> {
    within_jobs_limit(shared, who)?;
    let expired = || refuse(ErrorCode::Expired, format!("job {}'s upload was removed; submit it again", of.id));
    if of.removed_ms.is_some() {
        return Err(expired());
    }
    let jobs = &shared.jobs;
    let from = jobs.input_of(&of.id, &of.input_name);
    if !from.is_file() {
        return Err(expired());
    }
    let id = new_job_id();
    let to = jobs.input_of(&id, &of.input_name);
    let internal = |e: std::io::Error| refuse(ErrorCode::Internal, format!("copying the upload: {e}"));
    std::fs::create_dir_all(jobs.dir_of(&id)).map_err(internal)?;
    // A hard link costs nothing, and a job never writes its input.
    if std::fs::hard_link(&from, &to).is_err() {
        std::fs::copy(&from, &to).map_err(internal)?;
    }
    let spec = Spec::of(of).map_err(internal_error)?;
    shared.store.rerun(&of.id, &id, peer, client).map_err(internal_error)?;
    info!(job = %id, of = %of.id, "rerun");
    // The new job is the asker's, as its record says.
    launch(shared, Spec { id: id.clone(), client: who.name.clone(), ..spec }, false);
    Ok(id)
}
