//! What the decoder's side of a job hands the encoder's side besides pixels: each frame's
//! presentation timestamp, and every packet of the streams that are copied, in demux order.
//!
//! The source pushes, the sink pops in step with the frames it writes: before frame *n* it
//! writes every packet demuxed before frame *n* was decoded. Both run at the pace of the
//! pipeline, so the queue holds about a window of frames' worth of audio. An input whose
//! streams are interleaved far apart could make it grow: past [`MAX_QUEUED_BYTES`] the job
//! fails rather than take the memory.

use std::collections::VecDeque;
use std::sync::Mutex;

use ffmpeg_next::Packet;

/// Packet bytes held at most: tens of minutes of compressed audio.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// One entry, in demux order.
pub enum Item {
    /// A video frame was decoded, with this presentation timestamp (in the input stream's
    /// time base), if it had one; the second is its place among the frames pushed, from 0.
    Frame(Option<i64>, u64),
    /// A packet of a copied stream (its `stream()` is the input stream's index).
    Packet(Packet),
}

/// The queue between a [`super::MediaSource`] and a [`super::MediaSink`].
#[derive(Default)]
pub struct SideQueue {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Item>,
    bytes: usize,
    /// Frames pushed so far.
    frames: u64,
}

/// The queue is over [`MAX_QUEUED_BYTES`].
#[derive(Debug, thiserror::Error)]
#[error("the input's other streams run more than {} MiB ahead of its video: it is interleaved too far apart to copy", MAX_QUEUED_BYTES >> 20)]
pub struct Overflow;

impl SideQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a decoded frame's timestamp.
    pub fn push_frame(&self, pts: Option<i64>) {
        let mut inner = self.lock();
        let seq = inner.frames;
        inner.frames += 1;
        inner.items.push_back(Item::Frame(pts, seq));
    }

    /// Forgets the frame pushed `seq`th (from 0), which a live input dropped before dispatch:
    /// the packets queued around it stay, in order.
    pub fn drop_frame(&self, seq: u64) {
        let mut inner = self.lock();
        if let Some(at) = inner.items.iter().position(|item| matches!(item, Item::Frame(_, s) if *s == seq)) {
            inner.items.remove(at);
        }
    }

    /// Queues a packet of a copied stream.
    pub fn push_packet(&self, packet: Packet) -> Result<(), Overflow> {
        let mut inner = self.lock();
        if inner.bytes + packet.size() > MAX_QUEUED_BYTES {
            return Err(Overflow);
        }
        inner.bytes += packet.size();
        inner.items.push_back(Item::Packet(packet));
        Ok(())
    }

    /// Takes the packets queued before the next frame, and that frame's timestamp (`None`
    /// when no frame is queued: the caller writes what it got).
    pub fn take_until_frame(&self, packets: &mut Vec<Packet>) -> Option<Option<i64>> {
        let mut inner = self.lock();
        while let Some(item) = inner.items.pop_front() {
            match item {
                Item::Frame(pts, _) => return Some(pts),
                Item::Packet(p) => {
                    inner.bytes -= p.size();
                    packets.push(p);
                }
            }
        }
        None
    }

    /// Takes the next frame's timestamp, dropping the packets queued before it (a resume
    /// skipping frames already written); `None` when no frame is queued.
    pub fn pop_frame(&self) -> Option<Option<i64>> {
        let mut dropped = Vec::new();
        self.take_until_frame(&mut dropped)
    }

    /// The next frame's timestamp, left queued; `None` when no frame is queued.
    pub fn next_frame(&self) -> Option<Option<i64>> {
        self.lock().items.iter().find_map(|item| match item {
            Item::Frame(pts, _) => Some(*pts),
            Item::Packet(_) => None,
        })
    }

    /// Takes the next frame's timestamp off the queue, leaving the packets queued before it
    /// (a resume passing over frames already written: what it read twice of the other streams
    /// is sorted out at the join).
    pub fn skip_frame(&self) {
        let mut inner = self.lock();
        if let Some(at) = inner.items.iter().position(|item| matches!(item, Item::Frame(..))) {
            inner.items.remove(at);
        }
    }

    /// Empties the queue.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.items.clear();
        inner.bytes = 0;
    }

    /// Takes every packet left (at the end of the job).
    pub fn take_rest(&self, packets: &mut Vec<Packet>) {
        let mut inner = self.lock();
        for item in std::mem::take(&mut inner.items) {
            if let Item::Packet(p) = item {
                packets.push(p);
            }
        }
        inner.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(stream: usize, size: usize) -> Packet {
        let mut p = Packet::new(size);
        p.set_stream(stream);
        p
    }

    #[test]
    fn packets_come_out_before_the_frame_they_preceded() {
        let q = SideQueue::default();
        q.push_packet(packet(1, 10)).unwrap();
        q.push_frame(Some(0));
        q.push_packet(packet(1, 10)).unwrap();
        q.push_packet(packet(2, 10)).unwrap();
        q.push_frame(Some(512));
        q.push_packet(packet(1, 10)).unwrap();
        let mut got = Vec::new();
        assert_eq!(q.take_until_frame(&mut got), Some(Some(0)));
        assert_eq!(got.len(), 1);
        got.clear();
        assert_eq!(q.take_until_frame(&mut got), Some(Some(512)));
        assert_eq!(got.iter().map(Packet::stream).collect::<Vec<_>>(), [1, 2]);
        got.clear();
        assert_eq!(q.take_until_frame(&mut got), None, "no frame left");
        assert_eq!(got.len(), 1, "but the packets after the last frame are handed over");
        q.take_rest(&mut got);
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn a_skipped_frame_leaves_its_packets_for_the_next() {
        let q = SideQueue::default();
        q.push_packet(packet(1, 10)).unwrap();
        q.push_frame(Some(0));
        q.push_packet(packet(2, 10)).unwrap();
        q.push_frame(Some(512));
        assert_eq!(q.next_frame(), Some(Some(0)));
        q.skip_frame();
        assert_eq!(q.next_frame(), Some(Some(512)), "peeking takes nothing");
        let mut got = Vec::new();
        assert_eq!(q.take_until_frame(&mut got), Some(Some(512)));
        assert_eq!(got.iter().map(Packet::stream).collect::<Vec<_>>(), [1, 2], "both packets, in order");
        q.skip_frame();
        assert_eq!(q.next_frame(), None);
    }

    #[test]
    fn the_queue_is_bounded() {
        let q = SideQueue::default();
        q.push_packet(packet(1, MAX_QUEUED_BYTES - 5)).unwrap();
        assert!(q.push_packet(packet(1, 10)).is_err());
        let mut got = Vec::new();
        q.take_rest(&mut got);
        q.push_packet(packet(1, 10)).expect("room again once taken");
    }
}
