//! Job lifecycle and progress events, published as JSON on the `<namespace>.events` fanout
//! exchange (and applied in-process to a server's own dashboard): previews build their view
//! from them, workers learn which jobs were cancelled.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::media::VideoInfo;
use crate::metrics::{Buckets, JobSummary, Progress};
use crate::protocol::job::JobId;

/// Something that happened to a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// The job waits for a job slot: its upload is whole, or it was resumed after a pause.
    Queued {
        /// The job.
        job: JobId,
        /// The filter chain.
        filters: String,
    },
    /// The upload decoded and frames are being dispatched.
    Started {
        /// The job.
        job: JobId,
        /// The filter chain.
        filters: String,
        /// The video, as the frames still to do see it (`frames` counts what remains).
        #[serde(flatten)]
        video: VideoInfo,
    },
    /// The job's numbers (rate-limited, ten a second at most).
    Progress {
        /// The job.
        job: JobId,
        /// The numbers.
        #[serde(flatten)]
        progress: Progress,
    },
    /// A downscaled JPEG of the latest frame written (two a second at most).
    Frame {
        /// The job.
        job: JobId,
        /// The frame's index.
        index: u64,
        /// The JPEG, base64 in JSON.
        #[serde(serialize_with = "to_base64", deserialize_with = "from_base64")]
        jpeg: Vec<u8>,
    },
    /// The job finished.
    Done {
        /// The job.
        job: JobId,
        /// Its report.
        summary: Box<JobSummary>,
        /// Its per-frame dispatch-to-result latencies, in [`crate::metrics::LATENCY_BOUNDS`].
        latency: Buckets,
    },
    /// The job failed.
    Failed {
        /// The job.
        job: JobId,
        /// Why.
        error: String,
    },
    /// The job was cancelled: workers drop its remaining tasks.
    Cancelled {
        /// The job.
        job: JobId,
    },
    /// The job was paused: nothing of it is in flight until it starts again (`Started`).
    Paused {
        /// The job.
        job: JobId,
    },
}

impl JobEvent {
    /// The job this event is about.
    pub fn job(&self) -> &JobId {
        match self {
            JobEvent::Queued { job, .. }
            | JobEvent::Started { job, .. }
            | JobEvent::Progress { job, .. }
            | JobEvent::Frame { job, .. }
            | JobEvent::Done { job, .. }
            | JobEvent::Failed { job, .. }
            | JobEvent::Cancelled { job }
            | JobEvent::Paused { job } => job,
        }
    }
}

fn to_base64<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_json() {
        let p = JobEvent::Progress {
            job: "j1".parse().unwrap(),
            progress: Progress {
                done: 5,
                total: Some(10),
                workers: [(crate::metrics::WorkerId::new("w:1"), 5)].into(),
                ..Default::default()
            },
        };
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.starts_with(r#"{"type":"progress","job":"j1","done":5,"#), "{text}");
        assert_eq!(serde_json::from_str::<JobEvent>(&text).unwrap(), p);
        let f = JobEvent::Frame { job: "j1".parse().unwrap(), index: 3, jpeg: vec![0xff, 0xd8, 0xff] };
        let text = serde_json::to_string(&f).unwrap();
        assert!(text.contains(r#""jpeg":"/9j/""#), "{text}");
        assert_eq!(serde_json::from_str::<JobEvent>(&text).unwrap(), f);
    }
}
