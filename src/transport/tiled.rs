//! Tiles as tasks: a transport that cuts each frame into the tiles of a [`Layout`], hands them
//! to another transport as tasks of their own (so a frame's tiles are filtered at once, on
//! several threads or workers, and none is larger than a tile), and puts each frame back
//! together once all its tiles are in. Whatever the inner transport does for a frame it does
//! for a tile: redelivery, re-dispatch, retries. A tile whose filters fail fails its frame (the
//! pipeline then writes the original frame, as for any failed frame); a tile that comes twice
//! counts once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use opencv::prelude::*;

use super::{JobContext, Transport, WireBytes};
use crate::filters::tiles::Layout;
use crate::protocol::task::{FrameOutcome, FrameResult, FrameTask};

/// Tasks of a job are frames cut into `layout`'s tiles, carried by `inner`.
pub struct TiledTransport<'a> {
    inner: &'a dyn Transport,
    layout: Arc<Layout>,
}

impl<'a> TiledTransport<'a> {
    /// Tiles every frame into `layout` (made for the frames' size) over `inner`.
    pub fn new(inner: &'a dyn Transport, layout: Layout) -> Self {
        TiledTransport { inner, layout: Arc::new(layout) }
    }
}

/// A frame whose tiles are out.
struct Pending {
    /// Each tile as filtered, once it is in.
    parts: Vec<Option<opencv::core::Mat>>,
    filter_time: Duration,
    retries: u32,
    failed: Option<String>,
}

impl Transport for TiledTransport<'_> {
    fn serve(
        &self,
        job: &JobContext,
        tasks: Receiver<FrameTask>,
        results: Sender<FrameResult>,
    ) -> anyhow::Result<WireBytes> {
        let n = self.layout.tiles().len() as u64;
        let pending: Arc<Mutex<HashMap<u64, Pending>>> = Arc::default();
        let (tile_tx, tile_rx) = bounded::<FrameTask>(n as usize);
        // Bounded by the frames in flight (the pipeline's window) times their tiles.
        let (back_tx, back_rx) = unbounded::<FrameResult>();
        {
            let (layout, pending, results) = (self.layout.clone(), pending.clone(), results.clone());
            std::thread::Builder::new()
                .name("vpd-tiles".into())
                .spawn(move || assemble(&layout, &pending, back_rx, &results))
                .map_err(|e| anyhow!("starting the tiles' assembler: {e}"))?;
        }
        std::thread::scope(|s| {
            let layout = &self.layout;
            let cutter = s.spawn(move || -> anyhow::Result<()> {
                for task in tasks {
                    let size = (task.frame.cols() as u32, task.frame.rows() as u32);
                    anyhow::ensure!(size == layout.size(), "a {size:?} frame in tiles made for {:?}", layout.size());
                    let parts = (0..n as usize).map(|i| layout.cut(&task.frame, i)).collect::<Result<Vec<_>, _>>()?;
                    let entry = Pending {
                        parts: (0..n).map(|_| None).collect(),
                        filter_time: Duration::ZERO,
                        retries: 0,
                        failed: None,
                    };
                    pending.lock().unwrap_or_else(|p| p.into_inner()).insert(task.index, entry);
                    for (i, part) in parts.into_iter().enumerate() {
                        let tile =
                            FrameTask { index: task.index * n + i as u64, frame: Arc::new(part), previous: None };
                        if tile_tx.send(tile).is_err() {
                            return Ok(()); // the inner transport stopped: its error says why
                        }
                    }
                }
                Ok(())
            });
            let served = self.inner.serve(job, tile_rx, back_tx);
            let cut = cutter.join().map_err(|_| anyhow!("the tiles' cutter panicked"))?;
            cut.and(served)
        })
    }
}

/// Takes the tiles' results as they come; sends each frame once all its tiles are in.
fn assemble(
    layout: &Layout,
    pending: &Mutex<HashMap<u64, Pending>>,
    back: Receiver<FrameResult>,
    results: &Sender<FrameResult>,
) {
    let n = layout.tiles().len() as u64;
    for r in back {
        let (index, tile) = (r.index / n, (r.index % n) as usize);
        let mut all = pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(frame) = all.get_mut(&index) else { continue }; // done already: a duplicate
        if frame.parts[tile].is_some() {
            continue;
        }
        // The frame's filtering took as long as its slowest tile: they run at once.
        frame.filter_time = frame.filter_time.max(r.filter_time);
        frame.retries += r.retries;
        frame.parts[tile] = Some(match r.outcome {
            FrameOutcome::Processed(m) => m,
            FrameOutcome::Failed(why) => {
                frame.failed.get_or_insert(why);
                opencv::core::Mat::default()
            }
        });
        if frame.parts.iter().any(Option::is_none) {
            continue;
        }
        let done = all.remove(&index).expect("the entry just read");
        drop(all);
        let outcome = match done.failed {
            Some(why) => FrameOutcome::Failed(why),
            None => {
                let parts: Vec<_> = done.parts.into_iter().flatten().collect();
                match layout.join(&parts) {
                    Ok(m) => FrameOutcome::Processed(m),
                    Err(e) => FrameOutcome::Failed(format!("putting the tiles together: {e}")),
                }
            }
        };
        let result =
            FrameResult { index, outcome, filter_time: done.filter_time, worker: r.worker, retries: done.retries };
        if results.send(result).is_err() {
            return; // the job is over
        }
    }
}
