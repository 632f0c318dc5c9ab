//! Job controls that change a job: cancel, pause, resume and rerun, as `vpd jobs` asks them
//! (`fetch`, the fifth, is a download: the `follow` module sends the result).

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::clients::{Client, RateLimited};
use super::drive::launch;
use super::refusal::{Refusal, internal_error, refuse};
use super::shared::Shared;
use crate::protocol::job::{JobControl, JobId, JobRecord, JobSpec, JobState};
use crate::protocol::message::ErrorCode;

/// When a client at its limit of jobs at once is told to try again (its jobs' ends are not
/// known in advance; a client that polls at this pace loses little).
pub(super) const JOBS_LIMIT_RETRY: Duration = Duration::from_secs(5);

/// Applies `control` to `job`; returns the job it concerns (a rerun's new one) and its state.
pub(super) async fn apply(
    shared: &Arc<Shared>,
    (peer, software, who): (&str, &str, &Client),
    job: &JobId,
    control: JobControl,
) -> Result<(JobId, JobState), Refusal> {
    let live = shared.jobs.get(job);
    let record = match &live {
        Some(_) => None,
        None => {
            let id = job.clone();
            let record = shared.off(move |s| s.store.get(&id)).await.map_err(internal_error)?;
            Some(record.ok_or_else(|| refuse(ErrorCode::NotFound, format!("no job {job} on this server")))?)
        }
    };
    let ended = |r: &JobRecord| refuse(ErrorCode::Conflict, format!("job {job} has ended ({})", r.state.as_str()));
    let streamed = |what: &str| {
        refuse(ErrorCode::Conflict, format!("job {job} is a live stream: it cannot {what}; its client starts it again"))
    };
    match (control, live, record) {
        (JobControl::Pause | JobControl::Resume | JobControl::Rerun, Some(live), _) if live.streaming => {
            Err(streamed("pause, resume or rerun"))
        }
        (JobControl::Resume | JobControl::Rerun, None, Some(r)) if r.spec.live.is_some() => {
            Err(streamed("resume or rerun"))
        }
        (JobControl::Cancel, Some(live), _) => {
            info!(%job, "cancelling the job, as asked");
            live.cancel();
            Ok((job.clone(), JobState::Cancelled))
        }
        (JobControl::Pause, Some(live), _) => {
            info!(%job, "pausing the job, as asked");
            live.set_paused(true);
            Ok((job.clone(), JobState::Paused))
        }
        (JobControl::Resume, Some(live), _) => {
            info!(%job, "resuming the job, as asked");
            live.set_paused(false);
            let state = match live.state() {
                JobState::Paused => JobState::Queued,
                other => other,
            };
            Ok((job.clone(), state))
        }
        (JobControl::Rerun, Some(live), _) => Err(refuse(
            ErrorCode::Conflict,
            format!("job {job} is {}; rerun it once it has ended", live.state().as_str()),
        )),
        (JobControl::Rerun, None, Some(r)) => {
            rerun(shared, (peer, software, who), &r).await.map(|id| (id, JobState::Queued))
        }
        (JobControl::Fetch, ..) => Err(refuse(ErrorCode::BadRequest, "a fetch is answered with the result")),
        // A failed job (a full disk, a lost cascade) goes on from its committed segments.
        (JobControl::Resume, None, Some(r)) if r.state == JobState::Failed => {
            within_jobs_limit(shared, who)?;
            retry(shared, &r).await.map(|()| (job.clone(), JobState::Queued))
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
pub(super) async fn retry(shared: &Arc<Shared>, r: &JobRecord) -> Result<(), Refusal> {
    let (id, input_name) = (r.id.clone(), r.spec.input_name.clone());
    let kept = r.removed_ms.is_none()
        && shared
            .off(move |s| {
                let kept = s.jobs.input_of(&id, &input_name).is_file();
                if kept {
                    s.store.transition(&id, JobState::Queued, None)?;
                }
                Ok(kept)
            })
            .await
            .map_err(internal_error)?;
    if !kept {
        return Err(refuse(ErrorCode::Expired, format!("job {}'s upload was removed; submit it again", r.id)));
    }
    info!(job = %r.id, committed_frames = r.committed_frames, "resuming a failed job, as asked");
    launch(shared, r.id.clone(), r.spec.clone(), false);
    Ok(())
}

/// Starts a new job on `of`'s kept upload, with its chain and options; returns its id.
pub(super) async fn rerun(
    shared: &Arc<Shared>,
    (peer, software, who): (&str, &str, &Client),
    of: &JobRecord,
) -> Result<JobId, Refusal> {
    within_jobs_limit(shared, who)?;
    let expired = || refuse(ErrorCode::Expired, format!("job {}'s upload was removed; submit it again", of.id));
    if of.removed_ms.is_some() {
        return Err(expired());
    }
    let id = JobId::new();
    let copied = {
        let (of, id) = (of.clone(), id.clone());
        let (peer, software, name) = (peer.to_string(), software.to_string(), who.name.clone());
        shared
            .off(move |s| {
                let (from, to) =
                    (s.jobs.input_of(&of.id, &of.spec.input_name), s.jobs.input_of(&id, &of.spec.input_name));
                if !from.is_file() {
                    return Ok(false);
                }
                let copying = |e: std::io::Error| anyhow::anyhow!("copying the upload: {e}");
                std::fs::create_dir_all(s.jobs.dir_of(&id)).map_err(copying)?;
                // A hard link costs nothing, and a job never writes its input.
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to).map_err(copying)?;
                }
                s.store.rerun(&of.id, &id, &peer, (&name, &software))?;
                Ok(true)
            })
            .await
            .map_err(internal_error)?
    };
    if !copied {
        return Err(expired());
    }
    info!(job = %id, of = %of.id, "rerun");
    // The new job is the asker's, as its record says.
    launch(shared, id.clone(), JobSpec { client: who.name.clone(), ..of.spec.clone() }, false);
    Ok(id)
}
