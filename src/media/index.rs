//! A demux-only pass over the input's video: each packet's timestamps, key flag and size in
//! decoding order, and from them the packets each segment of frames needs, so that a segment
//! can be handed to a worker as compressed packets rather than pixels.
//!
//! Frame *i* is the packet with the *i*-th smallest presentation timestamp: the order the
//! decoder hands frames out. A segment of frames `n·L … n·L+L−1` needs the packets from the
//! keyframe at or before its first frame (or that frame's predecessor, the previous frame
//! `motion` compares with, where the chain has `motion`) through the last packet, in decoding
//! order, of any of its frames: B-frames come after the frames they refer to, so nothing past
//! that packet is needed.

use std::ops::Range;
use std::path::Path;

use ffmpeg_next::{Packet, format, media};

use super::MediaError;

/// One video packet, as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Presentation timestamp, in the stream's time base.
    pub pts: Option<i64>,
    /// Decoding timestamp.
    pub dts: Option<i64>,
    /// A keyframe: decoding can start here.
    pub key: bool,
    /// Bytes.
    pub size: u32,
}

/// The packets of one segment: which to send, and which frames they give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The packets, by decoding position.
    pub packets: Range<usize>,
    /// The presentation timestamps of the segment's frames, in order.
    pub frames: Vec<i64>,
    /// The timestamp of the frame before the segment's first, where it was asked for: the
    /// packets give it too.
    pub previous: Option<i64>,
}

/// The input's video packets in decoding order.
#[derive(Debug, Clone)]
pub struct VideoIndex {
    entries: Vec<Entry>,
    /// Decoding positions in presentation order: `order[i]` is frame *i*'s packet.
    order: Vec<usize>,
}

impl VideoIndex {
    /// Reads the video packets of `path` (its best video stream) without decoding them.
    pub fn build(path: &Path) -> Result<Self, MediaError> {
        super::init();
        let mut input = format::input(&path).map_err(|_| MediaError::NotAVideo(path.to_path_buf()))?;
        let video = input
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| MediaError::NoVideoStream(path.to_path_buf()))?
            .index();
        let mut entries = Vec::new();
        loop {
            let mut packet = Packet::empty();
            match packet.read(&mut input) {
                Ok(()) => {}
                Err(ffmpeg_next::Error::Eof) => break,
                Err(_) => continue,
            }
            if packet.stream() == video {
                entries.push(Entry {
                    pts: packet.pts(),
                    dts: packet.dts(),
                    key: packet.is_key(),
                    size: packet.size() as u32,
                });
            }
        }
        Ok(Self::of(entries))
    }

    /// The index of `entries`, in decoding order.
    pub fn of(entries: Vec<Entry>) -> Self {
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by_key(|&i| (entries[i].pts.unwrap_or(i64::MIN), i));
        VideoIndex { entries, order }
    }

    /// Frames in the stream.
    pub fn frames(&self) -> u64 {
        self.order.len() as u64
    }

    /// Frame `frame`'s presentation timestamp (in presentation order, from 0).
    pub fn frame_pts(&self, frame: u64) -> Option<i64> {
        let at = *self.order.get(usize::try_from(frame).ok()?)?;
        self.entries[at].pts
    }

    /// The packets, in decoding order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Why the stream cannot be cut into segments of packets, if it cannot: packets without a
    /// presentation time, two frames at one time, or a stream that does not start on a keyframe.
    pub fn unusable(&self) -> Option<String> {
        if self.entries.is_empty() {
            return Some("the video has no packets".into());
        }
        if self.entries.iter().any(|e| e.pts.is_none()) {
            return Some("some video packets have no timestamp".into());
        }
        if self.order.windows(2).any(|w| self.entries[w[0]].pts == self.entries[w[1]].pts) {
            return Some("two video packets share a timestamp".into());
        }
        if !self.entries[0].key {
            return Some("the video does not start on a keyframe".into());
        }
        None
    }

    /// The packets and frames of segment `number` of `per_segment` frames, and of the frame
    /// before it where `with_previous`; `None` past the end or where [`VideoIndex::unusable`]
    /// says why not.
    pub fn cut(&self, number: u64, per_segment: u64, with_previous: bool) -> Option<Cut> {
        if self.unusable().is_some() || per_segment == 0 {
            return None;
        }
        let first = usize::try_from(number.checked_mul(per_segment)?).ok()?;
        if first >= self.order.len() {
            return None;
        }
        let end = first.saturating_add(per_segment as usize).min(self.order.len());
        let pts = |frame: usize| self.entries[self.order[frame]].pts.expect("checked by unusable");
        // The frames the packets must give: the segment's, and the one before it if asked.
        let from = if with_previous { first.saturating_sub(1) } else { first };
        let needed = &self.order[from..end];
        let last = *needed.iter().max().expect("at least one frame");
        let earliest = *needed.iter().min().expect("at least one frame");
        // The latest keyframe at or before every needed packet, whose own frame is not after the
        // first needed frame (a keyframe's leading pictures may refer to what came before it).
        let start = (0..=earliest).rev().find(|&i| {
            let e = &self.entries[i];
            e.key && e.pts.is_some_and(|p| p <= pts(from))
        })?;
        Some(Cut {
            packets: start..last + 1,
            frames: (first..end).map(pts).collect(),
            previous: (from < first).then(|| pts(from)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pts: i64, key: bool) -> Entry {
        Entry { pts: Some(pts), dts: None, key, size: 1 }
    }

    /// I0 P4 B2 B1 B3 | I8 P12 B10 B9 B11 (decoding order, pts in frames).
    fn gops() -> VideoIndex {
        let pts = [(0, true), (4, false), (2, false), (1, false), (3, false)];
        let entries = pts.iter().chain(&[(8, true), (12, false), (10, false), (9, false), (11, false)]);
        let mut v: Vec<Entry> = entries.map(|&(p, k)| entry(p, k)).collect();
        // 5, 6, 7 after the second GOP's packets would be wrong; they sit between the GOPs.
        v.splice(5..5, [entry(6, false), entry(5, false), entry(7, false)]);
        VideoIndex::of(v)
    }

    #[test]
    fn a_segment_takes_its_frames_packets_from_the_keyframe_before_its_predecessor() {
        let index = gops();
        assert_eq!(index.frames(), 13);
        assert_eq!(index.unusable(), None);
        // Segment 0: frames 0-3 come from I0 P4 B2 B1 B3 (frame 3's packet is the fifth).
        let cut = index.cut(0, 4, true).unwrap();
        assert_eq!(cut, Cut { packets: 0..5, frames: vec![0, 1, 2, 3], previous: None });
        // Segment 1: frames 4-7 and frame 3 before them: from I0 through P7's packet.
        let cut = index.cut(1, 4, true).unwrap();
        assert_eq!(cut, Cut { packets: 0..8, frames: vec![4, 5, 6, 7], previous: Some(3) });
        // Segment 2: frames 8-11 and 7: 7 precedes I8, so from I0 again; through B11.
        let cut = index.cut(2, 4, true).unwrap();
        assert_eq!(cut.packets, 0..13);
        assert_eq!(cut.frames, [8, 9, 10, 11]);
        // Segment 3 is the short last one: frame 12, with 11 before it, from I8.
        let cut = index.cut(3, 4, true).unwrap();
        assert_eq!(cut, Cut { packets: 8..13, frames: vec![12], previous: Some(11) });
        assert_eq!(index.cut(4, 4, true), None);
        // Without the frame before, segment 2 starts at its own keyframe.
        let cut = index.cut(2, 4, false).unwrap();
        assert_eq!(cut, Cut { packets: 8..13, frames: vec![8, 9, 10, 11], previous: None });
        assert_eq!(index.cut(1, 4, false).unwrap().packets, 0..8);
    }

    #[test]
    fn streams_without_usable_timestamps_are_not_cut() {
        let no_pts = VideoIndex::of(vec![entry(0, true), Entry { pts: None, dts: None, key: false, size: 1 }]);
        assert_eq!(no_pts.unusable().as_deref(), Some("some video packets have no timestamp"));
        assert_eq!(no_pts.cut(0, 1, false), None);
        let twice = VideoIndex::of(vec![entry(0, true), entry(0, false)]);
        assert_eq!(twice.unusable().as_deref(), Some("two video packets share a timestamp"));
        let late = VideoIndex::of(vec![entry(0, false), entry(1, true)]);
        assert_eq!(late.unusable().as_deref(), Some("the video does not start on a keyframe"));
    }
}
