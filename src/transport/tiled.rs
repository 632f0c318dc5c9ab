//! Tiles as tasks: a transport that cuts each frame into the tiles of a [`Layout`], hands them
//! to another transport as tasks of their own (so a frame's tiles are filtered at once, on
//! several threads or workers, and none is larger than a tile), and puts each frame back
//! together once all its tiles are in. Whatever the inner transport does for a frame it does
//! for a tile: redelivery, re-dispatch, retries. A tile whose filters fail fails its frame (the
//! pipeline then writes the original frame, as for any failed frame); a tile that comes twice
//! counts once. A chain's steps from the first that needs the whole frame run on the joined
//! frame, on the assembler's thread. A frame counts for one of the workers that filtered its
//! tiles, so that each worker's count follows its share of the tiles.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use opencv::prelude::*;

use super::{JobContext, Transport, WireBytes};
use crate::filters::tiles::{self, Layout, TilePlan, Tiles};
use crate::filters::{Chain, FilterEnv, Processor};
use crate::protocol::task::{FrameOutcome, FrameResult, FrameTask, WorkerId};

/// Tasks of a job are frames cut into `layout`'s tiles, carried by `inner`.
pub struct TiledTransport<'a> {
    inner: &'a dyn Transport,
    layout: Arc<Layout>,
    /// The steps the tiles go through.
    tiled: Chain,
    /// The steps run on the joined frame, and what they need from the host.
    whole: Option<(Chain, FilterEnv)>,
}

impl<'a> TiledTransport<'a> {
    /// Runs every frame as `plan` says (its layout made for the frames' size) over `inner`;
    /// `env` is for the steps run on the joined frame.
    pub fn new(inner: &'a dyn Transport, plan: TilePlan, env: FilterEnv) -> Self {
        let TilePlan { layout, tiled, whole, .. } = plan;
        TiledTransport { inner, layout: Arc::new(layout), tiled, whole: whole.map(|w| (w, env)) }
    }
}

/// How a job's frames go to a transport: in tiles or not, and how, for its summary.
pub struct Tiling<'a> {
    /// The tiled transport, where the frames are tiled.
    pub tiled: Option<TiledTransport<'a>>,
    /// The summary's `tiles`: how the frames are cut, or why not (`none: …`); `None` where
    /// nothing was asked (`off`, or `auto` on smaller frames).
    pub summary: Option<String>,
}

impl<'a> Tiling<'a> {
    /// What the frames go through: the tiled transport, or `inner` as it is.
    pub fn transport<'b>(&'b self, inner: &'b dyn Transport) -> &'b dyn Transport {
        match &self.tiled {
            Some(tiled) => tiled,
            None => inner,
        }
    }

    /// Why the frames are not tiled, where tiles were asked for or the frames are large.
    pub fn why_not(&self) -> Option<&str> {
        self.summary.as_deref().and_then(|s| s.strip_prefix("none: "))
    }
}

/// Whether `chain` runs on frames of `size` over `inner` in tiles, as `tiles` asks, each tile
/// at most `max_tile_bytes`; `lossless` where `inner` brings tiles back exactly as filtered
/// (see [`tiles::plan`]). The steps run on the joined frame use `env`, which must hold what
/// they need (the face cascade), or the frames are not tiled.
pub fn tiling<'a>(
    inner: &'a dyn Transport,
    tiles: Tiles,
    chain: &Chain,
    (size, max_tile_bytes): ((u32, u32), u64),
    lossless: bool,
    env: &FilterEnv,
) -> Tiling<'a> {
    let not = |why: &str| Tiling { tiled: None, summary: Some(format!("none: {why}")) };
    match tiles::plan(tiles, chain, size, max_tile_bytes, lossless) {
        Ok(None) => Tiling { tiled: None, summary: None },
        Err(why) => not(&why),
        Ok(Some(plan)) if plan.whole.as_ref().is_some_and(|w| w.check_env(env).is_err()) => {
            not("its whole-frame steps would run where there is no face cascade")
        }
        Ok(Some(plan)) => {
            let summary = Some(plan.describe());
            Tiling { tiled: Some(TiledTransport::new(inner, plan, env.clone())), summary }
        }
    }
}

/// A frame whose tiles are out.
struct Pending {
    /// Each tile as filtered, once it is in.
    parts: Vec<Option<opencv::core::Mat>>,
    /// Who filtered the tiles in so far.
    workers: Vec<WorkerId>,
    filter_time: Duration,
    retries: u32,
    failed: Option<String>,
    /// The frame as decoded, and the one before it, for the steps run on the joined frame.
    source: crate::protocol::task::Frame,
    previous: Option<crate::protocol::task::Frame>,
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
            let whole = self.whole.clone();
            std::thread::Builder::new()
                .name("vpd-tiles".into())
                .spawn(move || {
                    let mut whole = whole.map(|(chain, env)| Processor::new(&chain, &env).map_err(|e| e.to_string()));
                    assemble(&layout, &pending, back_rx, &results, whole.as_mut())
                })
                .map_err(|e| anyhow!("starting the tiles' assembler: {e}"))?;
        }
        let job = JobContext { chain: self.tiled.clone(), ..job.clone() };
        std::thread::scope(|s| {
            let layout = &self.layout;
            let cutter = s.spawn(move || -> anyhow::Result<()> {
                for task in tasks {
                    let size = (task.frame.cols() as u32, task.frame.rows() as u32);
                    anyhow::ensure!(size == layout.size(), "a {size:?} frame in tiles made for {:?}", layout.size());
                    let parts = (0..n as usize).map(|i| layout.cut(&task.frame, i)).collect::<Result<Vec<_>, _>>()?;
                    let entry = Pending {
                        parts: (0..n).map(|_| None).collect(),
                        workers: Vec::with_capacity(n as usize),
                        filter_time: Duration::ZERO,
                        retries: 0,
                        failed: None,
                        source: task.frame.clone(),
                        previous: task.previous.clone(),
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
            let served = self.inner.serve(&job, tile_rx, back_tx);
            let cut = cutter.join().map_err(|_| anyhow!("the tiles' cutter panicked"))?;
            cut.and(served)
        })
    }
}

/// Credits each frame to one of the workers that filtered its tiles, so that over a job each
/// worker's frames follow its share of the tiles (the counts per worker the dashboard and the
/// summary show): a worker earns a credit for each tile it filters, and a frame goes to its
/// worker with the most, who spends a frame's worth of tiles.
#[derive(Default)]
struct Credit(BTreeMap<WorkerId, i64>);

impl Credit {
    /// Who is credited with a frame whose tiles these workers filtered (one entry a tile).
    fn frame(&mut self, tiles: &[WorkerId]) -> WorkerId {
        for w in tiles {
            *self.0.entry(w.clone()).or_default() += 1;
        }
        let best = tiles
            .iter()
            .max_by(|a, b| self.0[*a].cmp(&self.0[*b]).then_with(|| b.cmp(a)))
            .expect("a frame has tiles")
            .clone();
        *self.0.get_mut(&best).expect("credited above") -= tiles.len() as i64;
        best
    }
}

/// Takes the tiles' results as they come; sends each frame once all its tiles are in, joined,
/// and through the steps that run on the whole frame (`whole`), if any.
fn assemble(
    layout: &Layout,
    pending: &Mutex<HashMap<u64, Pending>>,
    back: Receiver<FrameResult>,
    results: &Sender<FrameResult>,
    mut whole: Option<&mut Result<Processor, String>>,
) {
    let n = layout.tiles().len() as u64;
    let mut credit = Credit::default();
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
        frame.workers.push(r.worker);
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
        let started = std::time::Instant::now();
        let outcome = match done.failed {
            Some(why) => FrameOutcome::Failed(why),
            None => {
                let parts: Vec<_> = done.parts.into_iter().flatten().collect();
                match (layout.join(&parts), whole.as_deref_mut()) {
                    (Err(e), _) => FrameOutcome::Failed(format!("putting the tiles together: {e}")),
                    (Ok(m), None) => FrameOutcome::Processed(m),
                    (Ok(_), Some(Err(e))) => FrameOutcome::Failed(e.clone()),
                    (Ok(m), Some(Ok(p))) => match p.apply_after(m, &done.source, done.previous.as_deref()) {
                        Ok(m) => FrameOutcome::Processed(m),
                        Err(e) => FrameOutcome::Failed(e.to_string()),
                    },
                }
            }
        };
        let filter_time = done.filter_time + started.elapsed();
        let worker = credit.frame(&done.workers);
        let result = FrameResult { index, outcome, filter_time, worker, retries: done.retries };
        if results.send(result).is_err() {
            return; // the job is over
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_credited_by_each_workers_share_of_their_tiles() {
        let (a, b, c) = (WorkerId::new("a:1"), WorkerId::new("b:1"), WorkerId::new("c:1"));
        let mut credit = Credit::default();
        let mut frames = BTreeMap::<WorkerId, u32>::new();
        // Of each frame's four tiles, a filters 3 and b 1, and every tenth frame c does them all.
        for i in 0..100 {
            let tiles = if i % 10 == 9 { vec![c.clone(); 4] } else { vec![a.clone(), b.clone(), a.clone(), a.clone()] };
            *frames.entry(credit.frame(&tiles)).or_default() += 1;
        }
        // 90 frames shared 3:1 give a 67 or 68 and b 22 or 23; c, alone on its 10, 10.
        assert_eq!(frames.values().sum::<u32>(), 100);
        assert!((67..=68).contains(&frames[&a]) && (22..=23).contains(&frames[&b]), "{frames:?}");
        assert_eq!(frames[&c], 10);
        // A frame goes to one of its own workers, even one who earned less elsewhere.
        assert_eq!(credit.frame(std::slice::from_ref(&c)), c);
    }
}
