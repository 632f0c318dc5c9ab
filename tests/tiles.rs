//! Tiles (issue 24): large frames cut into tiles with the margins their filters need, filtered
//! at once and put back together, give the untiled frames byte for byte.

use serde_json::Value;

use crate::util::cluster::*;
use crate::util::*;

/// Each decoded frame's MD5, as FFmpeg computes it: equal lists are byte-identical frames.
fn frame_md5s(path: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-map", "0:v", "-f", "framemd5", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit(',').next().unwrap().trim().to_string())
        .collect()
}

/// `vpd run` of `input` through `chain` with `--tiles tiles`, lossless: its frames' MD5s, its
/// summary and its stderr.
fn run_tiled(input: &std::path::Path, chain: &str, tiles: &str, dir: &std::path::Path) -> (Vec<String>, Value, String) {
    let out = dir.join(format!("{}-{tiles}.mkv", chain.replace([':', ',', '='], "_")));
    let o = out.to_str().unwrap();
    let run = run_vpd(&[
        "run",
        input.to_str().unwrap(),
        "-f",
        chain,
        "-o",
        o,
        "--codec",
        "ffv1",
        "--tiles",
        tiles,
        "--json",
        "--threads",
        "2",
    ]);
    assert!(run.status.success(), "{chain} --tiles {tiles}: {}", stderr(&run));
    let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
    (frame_md5s(&out), summary, stderr(&run))
}

#[test]
fn tiled_frames_equal_untiled_ones_byte_for_byte_at_an_odd_4k_size() {
    let dir = tempfile::tempdir().unwrap();
    // 3841x2161: no side splits evenly, and every tile's margin meets the frame's edge somewhere.
    let input = dir.path().join("in.mkv");
    write_clip(&input, &ClipSpec { frames: 4, width: 3841, height: 2161, fps: 25.0, face: false }, "ffv1");
    for chain in [
        "blur:ksize=31",
        "denoise:size=9",
        "sharpen:radius=3",
        "grade:contrast=1.4:warmth=0.4",
        "blur,sharpen",
        // Canny's edge map in the tiles, its hysteresis on the joined frame.
        "edges:low=20:high=60",
        "blur,sharpen,edges",
    ] {
        let (whole, summary, _) = run_tiled(&input, chain, "off", dir.path());
        assert!(summary.get("tiles").is_none(), "off: {summary}");
        for grid in ["1x2", "2x2", "3x3"] {
            let (tiled, summary, _) = run_tiled(&input, chain, grid, dir.path());
            assert!(summary["tiles"].as_str().unwrap().starts_with(&format!("{grid}, a margin of ")), "{summary}");
            assert_eq!(tiled.len(), 4, "{chain} in {grid} tiles");
            assert_eq!(tiled, whole, "{chain} in {grid} tiles: the frames differ");
        }
    }
}

#[test]
fn auto_tiles_4k_and_whole_frame_steps_run_on_the_joined_frame() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mkv");
    write_clip(&input, &ClipSpec { frames: 4, width: 3840, height: 2160, fps: 25.0, face: false }, "ffv1");
    let (auto, summary, _) = run_tiled(&input, "blur", "auto", dir.path());
    assert_eq!(summary["tiles"], "2x2, a margin of 7 px", "{summary}");
    let (off, _, _) = run_tiled(&input, "blur", "off", dir.path());
    assert_eq!(auto, off);
    assert_eq!(auto.len(), 4);
    // edges needs the whole frame for its hysteresis only: blur and edges run in tiles (a
    // margin of 7 + 2), the hysteresis across the seams and what follows on the joined frame,
    // and the summary says so; frames are the untiled ones.
    let (split, summary, _) = run_tiled(&input, "blur,edges,grade:gamma=0.7", "2x2", dir.path());
    let how = summary["tiles"].as_str().unwrap();
    assert!(
        how.starts_with("2x2, a margin of 9 px; edges in tiles, but its hysteresis across the seams on the joined frame, then grade:"),
        "{summary}"
    );
    let (plain, _, _) = run_tiled(&input, "blur,edges,grade:gamma=0.7", "off", dir.path());
    assert_eq!(split, plain);
    // A chain that starts with a whole-frame step that does not split is not tiled, and says
    // which and why.
    let (first, summary, err) = run_tiled(&input, "scale:width=3840,blur", "2x2", dir.path());
    assert!(err.contains("not cut into tiles: scale runs on the whole frame"), "{err}");
    assert!(summary["tiles"].as_str().unwrap().starts_with("none: scale runs on the whole frame"), "{summary}");
    let (plain, _, _) = run_tiled(&input, "scale:width=3840,blur", "off", dir.path());
    assert_eq!(first, plain);
    // A small frame is not tiled by auto, and a grid finer than the frame is refused clearly.
    let small = dir.path().join("small.mkv");
    write_clip(&small, &ClipSpec { frames: 6, width: 64, height: 48, fps: 25.0, face: false }, "ffv1");
    let (_, summary, _) = run_tiled(&small, "blur", "auto", dir.path());
    assert!(summary.get("tiles").is_none(), "{summary}");
    let bad = run_vpd(&["run", small.to_str().unwrap(), "-f", "blur", "-o", "/tmp/x.mkv", "--tiles", "0x2"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("use auto, off or COLSxROWS"), "{}", stderr(&bad));
}

/// The tasks the worker whose metrics are at `url` has filtered: tiles, or whole frames.
fn worker_tasks(url: &str) -> u64 {
    let (_, _, body) = crate::util::web::get(&format!("{url}metrics"));
    crate::util::web::sample(&String::from_utf8(body).unwrap(), "vpd_worker_frames_processed_total") as u64
}

#[test]
fn tiles_of_a_4k_frame_go_to_two_workers_as_tasks_of_their_own_and_come_back_identical() {
    let ns = Namespace::new("tiles_workers");
    // 3x3: tiles of three sizes (margins on two, three or four sides), each checked as its own.
    let server = Server::on_broker(&ns, &["--tiles", "3x3"]);
    let (_a, a) = Worker::with_metrics(&ns, 1);
    let (_b, b) = Worker::with_metrics(&ns, 1);
    ns.wait_for_workers(2);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mkv");
    write_clip(&input, &ClipSpec { frames: 4, width: 3840, height: 2160, fps: 25.0, face: false }, "ffv1");
    let chain = "blur,sharpen,edges";
    let (whole, _, _) = run_tiled(&input, chain, "off", dir.path());
    let out = dir.path().join("through-workers.mkv");
    let summary = summary(&client(&server.addr(), &input, chain, &out, &["--split", "frames"]));
    // 4K is tiled 3x3, with the chain's margin (blur 7 + sharpen 5 + edges 2); the workers
    // find the edges within their tiles, the server follows them across the seams.
    let how = summary.tiles.as_deref().unwrap_or_default();
    assert!(how.starts_with("3x3, a margin of 14 px; edges in tiles, but its hysteresis"), "{summary:?}");
    assert_eq!((summary.failed_frames, summary.retries), (0, 0), "{summary:?}");
    // Each tile is a task: the workers took 36 between them, both some.
    let (ta, tb) = (worker_tasks(&a), worker_tasks(&b));
    assert!(ta > 0 && tb > 0 && ta + tb >= 36, "tiles per worker: {ta} and {tb}");
    assert_eq!(frame_md5s(&out), whole, "the frames through the workers are vpd run's, byte for byte");
    // Each frame counts once, for a worker that filtered tiles of it.
    assert_eq!(summary.workers.values().sum::<u64>(), 4, "{summary:?}");
    let (code, err) = server.stop();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_server_with_tiles_off_sends_4k_frames_whole() {
    let ns = Namespace::new("tiles_off");
    let server = Server::on_broker(&ns, &["--tiles", "off", "--max-message", "134217728"]);
    let (_w, url) = Worker::with_metrics(&ns, 1);
    ns.wait_for_workers(1);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mkv");
    write_clip(&input, &ClipSpec { frames: 4, width: 3840, height: 2160, fps: 25.0, face: false }, "ffv1");
    let (whole, _, _) = run_tiled(&input, "blur,edges", "off", dir.path());
    let out = dir.path().join("whole.mkv");
    let summary = summary(&client(&server.addr(), &input, "blur,edges", &out, &["--split", "frames"]));
    assert_eq!(summary.tiles, None, "{summary:?}");
    assert_eq!(worker_tasks(&url), 4, "one task a frame");
    assert_eq!(frame_md5s(&out), whole);
    // A bad grid is a usage error, said at once.
    let bad = run_vpd(&["server", "--listen", "127.0.0.1:0", "--tiles", "2y2"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("use auto, off or COLSxROWS"), "{}", stderr(&bad));
    let (code, err) = server.stop();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_worker_killed_while_it_holds_tiles_loses_nothing_and_the_frames_are_identical() {
    let ns = Namespace::new("tiles_kill");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mkv");
    write_clip(&input, &ClipSpec { frames: 8, width: 3840, height: 2160, fps: 25.0, face: false }, "ffv1");
    let chain = "blur:ksize=51";
    let (whole, _, _) = run_tiled(&input, chain, "off", dir.path());
    let server = Server::on_broker(&ns, &[]);
    // Alone at first, it always holds tiles it has not acked while the job runs.
    let mut doomed = Worker::start(&ns, 2);
    ns.wait_for_workers(1);
    let events = Events::subscribe(&ns);
    let output = dir.path().join("out.mkv");
    let mut survivor = None;
    let job = std::thread::scope(|s| {
        let job = s.spawn(|| client(&server.addr(), &input, chain, &output, &["--split", "frames"]));
        events.wait_for_progress(1);
        signal(&doomed.child.0, libc::SIGKILL);
        let _ = doomed.child.0.wait();
        survivor = Some(Worker::start(&ns, 2));
        job.join().unwrap()
    });
    let s = summary(&job);
    assert_eq!((s.frames, s.failed_frames), (8, 0), "{s:?}");
    assert!(s.tiles.as_deref().is_some_and(|t| t.starts_with("2x2")), "{s:?}");
    assert!(s.retries >= 1, "the tiles the killed worker held were redelivered and counted: {s:?}");
    drop(survivor);
    assert_eq!(frame_md5s(&output), whole, "after kill -9, the frames are vpd run's untiled ones");
}

#[test]
fn an_8k_frame_goes_through_rabbitmq_in_tiles_of_under_16_mib() {
    let ns = Namespace::new("tiles_8k");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mkv");
    write_clip(&input, &ClipSpec { frames: 4, width: 7680, height: 4320, fps: 25.0, face: false }, "ffv1");
    let (whole, _, _) = run_tiled(&input, "grade:contrast=1.2", "off", dir.path());
    let server = Server::on_broker(&ns, &[]);
    let _workers = [Worker::start(&ns, 1), Worker::start(&ns, 1)];
    ns.wait_for_workers(2);
    let output = dir.path().join("out.mkv");
    let s = summary(&client(
        &server.addr(),
        &input,
        "grade:contrast=1.2",
        &output,
        &["--split", "frames", "--transport", "raw"],
    ));
    // An 8K frame is 99.5 MB of BGR; in tiles of at most 8 MiB (--max-message), 4x4.
    assert!(s.tiles.as_deref().is_some_and(|t| t.starts_with("4x4")), "{s:?}");
    let per_task = s.wire_bytes_sent as f64 / (s.frames * 16) as f64;
    assert!(per_task < 8.5 * 1024.0 * 1024.0, "each tile task is a tile's raw bytes and a header: {per_task} bytes");
    assert_eq!(frame_md5s(&output), whole, "the 8K frames are vpd run's, byte for byte");
}
