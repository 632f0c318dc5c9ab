//! One segment task, as a worker (or the server's own threads) does it: decode the packets,
//! run the chain on each frame in order, encode the filtered frames with a fresh encoder.
//!
//! Frames go through one at a time, from the decoder to the encoder, so a segment is never held
//! decoded whole. `motion` on the segment's first frame sees the true previous source frame,
//! which the task's packets also decode (it is not filtered or encoded).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use opencv::core::Mat;

use crate::media::packets::{SegmentEncoder, SegmentFrame, decode_each};
use crate::media::thumbnail;
use crate::protocol::segment::{SEGMENT_VERSION, SegmentOutcome, SegmentResult, SegmentTask};
use crate::protocol::task::FrameOutcome;
use crate::transport::{ProcessorCache, execute};

/// A worker reports how far it is into a segment every this many frames.
pub const PROGRESS_EVERY: u64 = 5;

/// Decodes, filters and encodes `task`'s segment with a processor from `cache`; `worker` and
/// `retries` go into the result, and `progress` hears the frames done every
/// [`PROGRESS_EVERY`]. Any frame the chain fails on fails the segment: the server then does
/// it frame by frame, where a frame that fails alone is written as it was.
pub fn process(
    task: &SegmentTask,
    cache: &mut ProcessorCache,
    worker: &str,
    retries: u32,
    mut progress: impl FnMut(u64),
) -> (SegmentResult, Duration) {
    let mut filter_time = Duration::ZERO;
    let outcome = match run(task, cache, &mut filter_time, &mut progress) {
        Ok((file, frames, last)) => {
            let thumbnail = last.as_ref().and_then(|m| thumbnail(m).ok()).unwrap_or_default();
            SegmentOutcome::Encoded { file, frames, filter_us: filter_time.as_micros() as u64, thumbnail }
        }
        Err(e) => SegmentOutcome::Failed(format!("{e:#}")),
    };
    let result = SegmentResult {
        version: SEGMENT_VERSION,
        job: task.job.clone(),
        number: task.input.number,
        worker: worker.to_string(),
        retries,
        outcome,
    };
    (result, filter_time)
}

/// The segment file's bytes, its frame count and its last filtered frame.
fn run(
    task: &SegmentTask,
    cache: &mut ProcessorCache,
    filter_time: &mut Duration,
    progress: &mut impl FnMut(u64),
) -> anyhow::Result<(Vec<u8>, u64, Option<Mat>)> {
    let input = &task.input;
    // Named for messages, and for the encoder's container.
    let shown = PathBuf::from(format!("{}-segment-{}", task.job, input.number)).with_extension(&task.container);
    let processor = cache.get(&task.chain)?;
    let needs_previous = task.chain.needs_previous();
    let mut encoder = SegmentEncoder::open(input, &shown, &task.output, task.size)?;
    let mut previous: Option<Mat> = None;
    let mut last: Option<Mat> = None;
    let mut done = 0u64;
    decode_each(input, &shown, |frame| {
        let mat = match frame {
            SegmentFrame::Previous(m) => {
                previous = Some(m);
                return Ok(());
            }
            SegmentFrame::Frame(_, m) => m,
        };
        let (outcome, time) = execute(processor, &mat, previous.as_ref().filter(|_| needs_previous));
        *filter_time += time;
        let out = match outcome {
            FrameOutcome::Processed(out) => out,
            FrameOutcome::Failed(reason) => {
                return Err(anyhow!("the filters failed on frame {done} of the segment: {reason}"));
            }
        };
        encoder.write(&out)?;
        last = Some(out);
        if needs_previous {
            previous = Some(mat);
        }
        done += 1;
        if done % PROGRESS_EVERY == 0 {
            progress(done);
        }
        Ok(())
    })?;
    Ok((encoder.finish()?, done, last))
}
