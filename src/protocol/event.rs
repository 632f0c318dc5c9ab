//! Job lifecycle and progress events, published as JSON on the `<namespace>.events` fanout
//! exchange (and applied in-process to a server's own dashboard): previews build their view
//! from them, workers learn which jobs were cancelled.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::metrics::{Buckets, JobSummary, Progress};

/// Something that happened to a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// The upload decoded and frames are being dispatched.
    Started {
        /// The job.
        job: String,
        /// The filter chain.
        filters: String,
        /// Frames the container announces.
        frames: Option<u64>,
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// Frame rate of the video.
        fps: f64,
    },
    /// The job's numbers (rate-limited, ten a second at most).
    Progress {
        /// The job.
        job: String,
        /// The numbers.
        #[serde(flatten)]
        progress: Progress,
    },
    /// A downscaled JPEG of the latest frame written (two a second at most).
    Frame {
        /// The job.
        job: String,
        /// The frame's index.
        index: u64,
        /// The JPEG, base64 in JSON.
        #[serde(serialize_with = "to_base64", deserialize_with = "from_base64")]
        jpeg: Vec<u8>,
    },
    /// The job finished.
    Done {
        /// The job.
        job: String,
        /// Its report.
        summary: Box<JobSummary>,
        /// Its per-frame dispatch-to-result latencies, in [`crate::metrics::LATENCY_BOUNDS`].
        latency: Buckets,
    },
    /// The job failed.
    Failed {
        /// The job.
        job: String,
        /// Why.
        error: String,
    },
    /// The job was cancelled: workers drop its remaining tasks.
    Cancelled {
        /// The job.
        job: String,
    },
    /// The job was paused: nothing of it is in flight until it starts again (`Started`).
    Paused {
        /// The job.
        job: String,
    },
}

impl JobEvent {
    /// The job this event is about.
    pub fn job(&self) -> &str {
        match self {
            JobEvent::Started { job, .. }
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
            job: "j1".into(),
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
        let f = JobEvent::Frame { job: "j1".into(), index: 3, jpeg: vec![0xff, 0xd8, 0xff] };
        let text = serde_json::to_string(&f).unwrap();
        assert!(text.contains(r#""jpeg":"/9j/""#), "{text}");
        assert_eq!(serde_json::from_str::<JobEvent>(&text).unwrap(), f);
    }
}
