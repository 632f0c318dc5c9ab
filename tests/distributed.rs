//! `vpd server`, `vpd worker` and `vpd client` as separate processes on the real RabbitMQ:
//! outputs compared frame by frame with `vpd run`'s, workers killed and frozen mid-job,
//! jobs cancelled, connections cut.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use vpd::protocol::event::JobEvent;
use vpd::protocol::task::Correlation;

use crate::util::cluster::*;
use crate::util::*;

#[test]
fn run_server_and_remote_workers_write_identical_frames() {
    let ns = Namespace::new("same");
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 20, width: 480, height: 360, fps: 25.0, face: true });
    let local = Server::start(&["--listen", "127.0.0.1:0", "--threads", "2"]);
    let remote = Server::on_broker(&ns, &[]);
    let _workers = [Worker::start(&ns, 1), Worker::start(&ns, 1)];
    ns.wait_for_workers(2);
    for chain in [
        "blur:ksize=9",
        "edges",
        "faces:mode=blur",
        "motion",
        "blur:ksize=5,motion,faces,edges",
        "denoise,grade:contrast=1.1:saturation=1.15,sharpen",
        "faces,scale:width=160",
    ] {
        let want = reference(&input, chain, &dir.path().join("run.mkv"));
        let s = summary(&client(&local.addr(), &input, chain, &dir.path().join("local.mkv"), &[]));
        assert_eq!((s.frames, s.failed_frames), (20, 0), "{chain}");
        assert_same_frames(&dir.path().join("local.mkv"), &want, &format!("{chain} (server, in-process)"));
        let s = summary(&client(&remote.addr(), &input, chain, &dir.path().join("remote.mkv"), &[]));
        assert_eq!((s.frames, s.failed_frames), (20, 0), "{chain}");
        // Both workers took frames: `motion` got its previous frame from the task, not from a
        // worker's memory.
        assert_eq!(s.workers.len(), 2, "{chain}: frames per worker {:?}", s.workers);
        assert_eq!(s.workers.values().sum::<u64>(), 20);
        assert_same_frames(&dir.path().join("remote.mkv"), &want, &format!("{chain} (two workers over RabbitMQ)"));
    }
    let frame_bytes = 480 * 360 * 3;
    let mut sent = Vec::new();
    for transport in ["raw", "lz4"] {
        let out = dir.path().join(format!("{transport}.mkv"));
        let s = summary(&client(&remote.addr(), &input, "motion", &out, &["--transport", transport]));
        assert_same_frames(&out, &reference(&input, "motion", &dir.path().join("run.mkv")), transport);
        sent.push(s.wire_bytes_sent);
    }
    // Raw, every task carries its frame and (but the first) the previous one: 39 frames' worth
    // for 20 tasks, plus headers of well under a kilobyte each.
    assert!((39 * frame_bytes..39 * frame_bytes + 20 * 1024).contains(&sent[0]), "raw sent {} bytes", sent[0]);
    assert!(sent[1] < sent[0] / 2, "LZ4 halves these synthetic frames at least: {sent:?}");
    let local = summary(&client(&local.addr(), &input, "edges", &dir.path().join("l.mkv"), &[]));
    assert_eq!((local.wire_bytes_sent, local.wire_bytes_received), (0, 0), "nothing crosses a wire in-process");
    // JPEG in transit is lossy, but close.
    let out = dir.path().join("jpeg.mkv");
    summary(&client(&remote.addr(), &input, "blur:ksize=3", &out, &["--transport", "jpeg:95"]));
    let want = reference(&input, "blur:ksize=3", &dir.path().join("run.mkv"));
    let got = decode_all(&out);
    assert_eq!(got.len(), want.len());
    // Through JPEG twice (task and result) at quality 95: above 30 dB PSNR, good quality by the
    // usual measure (these sharp synthetic frames measure about 33 dB).
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let psnr = opencv::core::psnr(g, w, 255.0).unwrap();
        assert!(psnr > 30.0, "frame {i}: jpeg:95 round trip at {psnr:.1} dB");
    }
    assert!(got.iter().zip(&want).any(|(g, w)| max_diff(g, w) > 0.0), "and it is lossy");
}

#[test]
fn killing_a_worker_mid_job_loses_nothing() {
    let ns = Namespace::new("kill");
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 60, width: 640, height: 480, fps: 25.0, face: false });
    let chain = "blur:ksize=51,motion";
    let want = reference(&input, chain, &dir.path().join("run.mkv"));
    let server = Server::on_broker(&ns, &[]);
    // Alone at first: with the job's window (20 frames) far above its prefetch (2), it always
    // holds two unacked tasks while the job runs.
    let mut doomed = Worker::start(&ns, 2);
    ns.wait_for_workers(1);
    let events = Events::subscribe(&ns);
    let output = dir.path().join("out.mkv");
    let mut survivor = None;
    let job = std::thread::scope(|s| {
        let job = s.spawn(|| client(&server.addr(), &input, chain, &output, &[]));
        events.wait_for_progress(6);
        // Mid-job, holding tasks it has not acked: kill -9. Then another worker takes over.
        signal(&doomed.child.0, libc::SIGKILL);
        let _ = doomed.child.0.wait();
        survivor = Some(Worker::start(&ns, 2));
        job.join().unwrap()
    });
    let s = summary(&job);
    assert_eq!((s.frames, s.failed_frames), (60, 0));
    // It held two tasks; one of them may have been acked on its way out, the other was not.
    assert!(s.retries >= 1, "the tasks the killed worker held were redelivered and counted: {s:?}");
    assert_eq!(s.workers.len(), 2, "both workers took frames: {:?}", s.workers);
    drop(survivor);
    assert_same_frames(&output, &want, "after kill -9");
}

#[test]
fn a_frozen_worker_is_routed_around() {
    let ns = Namespace::new("frozen");
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 40, width: 480, height: 360, fps: 25.0, face: false });
    let chain = "blur:ksize=31";
    let want = reference(&input, chain, &dir.path().join("run.mkv"));
    let server = Server::on_broker(&ns, &["--redispatch-after", "1"]);
    // Alone at first, so that it holds unacked tasks when it freezes (see the kill test).
    let frozen = Worker::start(&ns, 2);
    ns.wait_for_workers(1);
    let events = Events::subscribe(&ns);
    let output = dir.path().join("out.mkv");
    let mut healthy = None;
    let job = std::thread::scope(|s| {
        let job = s.spawn(|| client(&server.addr(), &input, chain, &output, &[]));
        events.wait_for_progress(4);
        // Alive to RabbitMQ (its connection stays open) but doing nothing: only the server's
        // re-dispatch can finish the frames it holds. It must hold some when it freezes: with
        // a broker beside us, ask it, and try again at the next frames if it held none.
        let tasks = ns.topology().tasks();
        for _ in 0..20 {
            signal(&frozen.child.0, libc::SIGSTOP);
            if unacked(&tasks).is_none_or(|n| n > 0) {
                break;
            }
            signal(&frozen.child.0, libc::SIGCONT);
            events.wait_for_progress(0);
        }
        healthy = Some(Worker::start(&ns, 2));
        job.join().unwrap()
    });
    drop(healthy);
    signal(&frozen.child.0, libc::SIGCONT);
    let s = summary(&job);
    assert_eq!((s.frames, s.failed_frames), (40, 0));
    assert!(s.retries >= 1, "overdue frames were re-dispatched: {s:?}");
    assert_same_frames(&output, &want, "around a frozen worker");
}

#[test]
fn a_worker_stops_gracefully_finishing_what_it_holds() {
    let ns = Namespace::new("graceful");
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 40, width: 480, height: 360, fps: 25.0, face: false });
    let chain = "blur:ksize=41";
    let server = Server::on_broker(&ns, &[]);
    let mut leaving = Worker::start(&ns, 2);
    let _staying = Worker::start(&ns, 1);
    ns.wait_for_workers(2);
    let events = Events::subscribe(&ns);
    let output = dir.path().join("out.mkv");
    let (job, exit) = std::thread::scope(|s| {
        let job = s.spawn(|| client(&server.addr(), &input, chain, &output, &[]));
        events.wait_for_progress(5);
        signal(&leaving.child.0, libc::SIGTERM);
        let exit = wait_output(&mut leaving.child.0);
        (job.join().unwrap(), exit)
    });
    assert_eq!(exit.0, Some(0), "the worker exits 0 after finishing its tasks: {}", exit.1);
    let s = summary(&job);
    assert_eq!((s.frames, s.failed_frames), (40, 0));
    // It acked what it held, so nothing it took needed redelivering.
    assert_eq!(s.retries, 0, "{s:?}");
    assert_same_frames(&output, &reference(&input, chain, &dir.path().join("run.mkv")), "after a graceful stop");
}

#[test]
fn ctrl_c_in_the_client_cancels_the_job_on_the_server() {
    let ns = Namespace::new("cancel");
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 150, width: 640, height: 480, fps: 25.0, face: false });
    let server = Server::on_broker(&ns, &[]);
    let _worker = Worker::start(&ns, 1);
    ns.wait_for_workers(1);
    let events = Events::subscribe(&ns);
    let output = dir.path().join("out.mkv");
    let mut child = vpd()
        .args(["client", input.to_str().unwrap(), "--server", &server.addr(), "-f", "blur:ksize=101", "-o"])
        .arg(&output)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    events.wait_for_progress(2);
    signal(&child, libc::SIGINT);
    let (code, err) = wait_output(&mut child);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    assert!(!output.exists() && partial_files(dir.path()).is_empty(), "no output, no partial file");
    // The server announced it and workers drop the job's remaining tasks: the queue empties
    // long before 150 heavy frames could have been filtered.
    events.wait_for(Duration::from_secs(30), "cancelled", |e| matches!(e, JobEvent::Cancelled { .. }));
    let tasks = ns.topology().tasks();
    assert!(wait_for(Duration::from_secs(30), || ns.stats(&tasks).0 == 0), "the cancelled job's tasks were dropped");
    assert!(
        wait_for(Duration::from_secs(10), || files_in(&server.work_dir).is_empty()),
        "{:?}",
        files_in(&server.work_dir)
    );
    // And the server goes on serving.
    let s = summary(&client(&server.addr(), &input, "edges", &dir.path().join("after.mkv"), &[]));
    assert_eq!(s.frames, 150);
}

#[test]
fn clients_over_ipv4_ipv6_and_a_unix_socket_two_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 20, ..ClipSpec::default() });
    let socket = dir.path().join("vpd.sock");
    let server = Server::start(&["--listen", "[::]:0", "--unix", socket.to_str().unwrap(), "--threads", "2"]);
    let port = server.tcp.as_deref().unwrap().rsplit(':').next().unwrap().to_string();
    let want = reference(&input, "edges", &dir.path().join("run.mkv"));
    let addrs = [format!("127.0.0.1:{port}"), format!("[::1]:{port}"), format!("unix:{}", socket.display())];
    // All three at once: the server runs jobs side by side (two slots; the third waits).
    let outputs: Vec<PathBuf> = (0..addrs.len()).map(|i| dir.path().join(format!("out{i}.mkv"))).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> =
            addrs.iter().zip(&outputs).map(|(a, o)| s.spawn(|| summary(&client(a, &input, "edges", o, &[])))).collect();
        for h in handles {
            assert_eq!(h.join().unwrap().frames, 20);
        }
    });
    for (addr, out) in addrs.iter().zip(&outputs) {
        assert_same_frames(out, &want, addr);
    }
    let (code, err) = server.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(!socket.exists(), "the socket file is removed on exit");
}

#[test]
fn an_unreachable_broker_is_a_clear_error_at_start() {
    let dead = "amqp://guest:secret@127.0.0.1:1/%2f";
    let state = tempfile::tempdir().unwrap();
    let state = state.path().to_str().unwrap();
    for role in [
        vec!["server", "--listen", "127.0.0.1:0", "--amqp", dead, "--state-dir", state],
        vec!["worker", "--amqp", dead],
        vec!["preview", "--listen", "127.0.0.1:0", "--amqp", dead],
    ] {
        let out = run_vpd(&role);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{role:?}: {err}");
        assert!(err.starts_with("vpd: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f"), "{role:?}: {err}");
        assert!(!err.contains("secret"), "the password is never printed");
    }
    // No URL at all: a usage error.
    let out = vpd().arg("worker").env_remove("VPD_AMQP_URL").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("a worker needs RabbitMQ"), "{}", stderr(&out));
    let out = vpd().arg("preview").env_remove("VPD_AMQP_URL").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("a preview reads job events from RabbitMQ"), "{}", stderr(&out));
}

#[test]
fn a_lost_broker_connection_is_reconnected_mid_job() {
    if !can_cut_connections() {
        eprintln!("skipped: needs rabbitmqctl beside the broker to cut connections");
        return;
    }
    let ns = Namespace::new("reconnect");
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 60, width: 480, height: 360, fps: 25.0, face: false });
    let chain = "blur:ksize=41,motion";
    let want = reference(&input, chain, &dir.path().join("run.mkv"));
    let server = Server::on_broker(&ns, &[]);
    let workers = [Worker::start(&ns, 1), Worker::start(&ns, 1)];
    ns.wait_for_workers(2);
    let events = Events::subscribe(&ns);
    let output = dir.path().join("out.mkv");
    let job = std::thread::scope(|s| {
        let job = s.spawn(|| client(&server.addr(), &input, chain, &output, &[]));
        events.wait_for_progress(10);
        // Freeze the workers so the job cannot finish before the cut (rabbitmqctl takes seconds):
        // the frames dispatched but not yet returned are then certainly outstanding.
        for w in &workers {
            signal(&w.child.0, libc::SIGSTOP);
        }
        cut_connection("vpd-server", server.child.0.id());
        for w in &workers {
            signal(&w.child.0, libc::SIGCONT);
        }
        job.join().unwrap()
    });
    let s = summary(&job);
    assert_eq!((s.frames, s.failed_frames), (60, 0));
    assert!(s.retries >= 1, "what was outstanding was re-published: {s:?}");
    assert_same_frames(&output, &want, "across a reconnect");
}

#[test]
fn a_worker_that_loses_the_broker_reconnects_and_finishes_the_job() {
    if !can_cut_connections() {
        eprintln!("skipped: rabbitmqctl is not here to cut a connection (a remote broker)");
        return;
    }
    let ns = Namespace::new("worker-cut");
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 40, ..ClipSpec::default() });
    let chain = "blur:ksize=21";
    let want = reference(&input, chain, &dir.path().join("run.mkv"));
    let server = Server::on_broker(&ns, &[]);
    // The only worker: the job can end only if it comes back.
    let worker = Worker::start(&ns, 1);
    ns.wait_for_workers(1);
    let events = Events::subscribe(&ns);
    let output = dir.path().join("out.mkv");
    let job = std::thread::scope(|s| {
        let job = s.spawn(|| client(&server.addr(), &input, chain, &output, &[]));
        events.wait_for_progress(5);
        // Frozen across the cut (rabbitmqctl takes a second), so that it certainly holds tasks
        // when its connection goes: the job can end only through its reconnect.
        signal(&worker.child.0, libc::SIGSTOP);
        cut_connection("vpd-worker", worker.child.0.id());
        signal(&worker.child.0, libc::SIGCONT);
        job.join().unwrap()
    });
    let s = summary(&job);
    assert_eq!((s.frames, s.failed_frames), (40, 0));
    assert_same_frames(&output, &want, "across the worker's reconnect");
    // It consumes again, on its new connection.
    ns.wait_for_workers(1);
}

#[test]
fn a_poison_task_is_retried_then_dead_lettered_and_reported() {
    use opencv::core::{CV_8UC3, Mat, Scalar};
    use vpd::broker::{Broker, MessageKind};
    use vpd::protocol::wire::{self, Encoder, ResultOutcome, TaskMeta, TransportEncoding};

    let ns = Namespace::new("poison");
    // `faces` without its cascade fails in the filter, every time.
    let (_worker, metrics) = Worker::with_metrics_and(&ns, 1, &["--face-cascade", "/nonexistent/cascade.xml"]);
    ns.wait_for_workers(1);
    let t = ns.topology();
    runtime().block_on(async {
        let broker = Broker::connect_one(&amqp_url(), "vpd-test-poison").await.unwrap();
        let (reply_to, mut replies) = broker.consume_replies(&t, "jpoison").await.unwrap();
        let publisher = broker.publisher().await.unwrap();
        let frame = Mat::new_rows_cols_with_default(32, 32, CV_8UC3, Scalar::all(1.0)).unwrap();
        let mut next_reply = async || {
            let reply = tokio::time::timeout(Duration::from_secs(60), replies.next()).await.expect("a result");
            let (header, frame) = wire::decode_result(&reply.unwrap().unwrap().body, None, None).unwrap();
            assert!(frame.is_none());
            match header.outcome {
                ResultOutcome::Failed(ref reason) => (header.index, header.retries, reason.clone()),
                other => panic!("expected a failure, got {other:?}"),
            }
        };

        let chain = "faces".parse().unwrap();
        let meta = TaskMeta { job: "jpoison", index: 3, chain: &chain, encoding: TransportEncoding::Raw };
        let body = wire::encode_task(&meta, &frame, None, &mut Encoder::new(TransportEncoding::Raw)).unwrap();
        assert!(
            publisher
                .task(&t, MessageKind::Task, &body, &reply_to, &Correlation::new("jpoison", 3), 0)
                .await
                .unwrap()
                .accepted()
                .await
                .unwrap()
        );
        let (index, retries, reason) = next_reply().await;
        assert_eq!(index, 3);
        assert_eq!(retries, vpd::worker::MAX_ATTEMPTS - 1, "tried {} times", vpd::worker::MAX_ATTEMPTS);
        assert!(reason.contains("cannot load the face cascade"), "{reason}");

        // A task that cannot be right (its previous frame is another size than its frame) is
        // reported at once, not retried: no attempt can make it right.
        let chain = "motion".parse().unwrap();
        let meta = TaskMeta { job: "jpoison", index: 4, chain: &chain, encoding: TransportEncoding::Raw };
        let other = Mat::new_rows_cols_with_default(16, 16, CV_8UC3, Scalar::all(1.0)).unwrap();
        let body = wire::encode_task(&meta, &frame, Some(&other), &mut Encoder::new(TransportEncoding::Raw)).unwrap();
        assert!(
            publisher
                .task(&t, MessageKind::Task, &body, &reply_to, &Correlation::new("jpoison", 4), 0)
                .await
                .unwrap()
                .accepted()
                .await
                .unwrap()
        );
        let (index, retries, reason) = next_reply().await;
        assert_eq!((index, retries), (4, 0));
        assert!(reason.contains("a 16x16 frame where 32x32 was expected"), "{reason}");

        // Bytes that are no task at all go straight to the dead letters.
        assert!(
            publisher
                .task(&t, MessageKind::Task, b"garbage", &reply_to, &Correlation::new("jpoison", 5), 0)
                .await
                .unwrap()
                .accepted()
                .await
                .unwrap()
        );
        broker.close().await;
    });
    assert!(wait_for(Duration::from_secs(10), || ns.stats(&t.dead()).0 == 3), "all three are dead-lettered");
    assert_eq!(ns.stats(&t.tasks()).0, 0);
    // The worker's own /metrics counts all three as given up on (once each reject is sent, so
    // perhaps a moment after the broker has them), and the two retries of the first.
    let scrape = || String::from_utf8(web::get(&format!("{metrics}metrics")).2).unwrap();
    wait_for(Duration::from_secs(10), || web::sample(&scrape(), "vpd_worker_frames_failed_total") == 3.0);
    let text = scrape();
    assert_eq!(web::sample(&text, "vpd_worker_frames_failed_total"), 3.0, "{text}");
    assert_eq!(web::sample(&text, "vpd_worker_frames_retried_total"), f64::from(vpd::worker::MAX_ATTEMPTS - 1));
    assert_eq!(web::sample(&text, "vpd_worker_frames_processed_total"), 0.0);
}

/// Two jobs, one worker at full speed and one that takes a task and never answers (stopped):
/// the adaptive window keeps the task queue shallow while the working worker does every frame;
/// a fixed window of 48 floods the queue with both jobs' frames.
#[test]
fn the_adaptive_window_feeds_the_workers_without_flooding_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 120, ..ClipSpec::default() });
    let mut deepest = Vec::new();
    let url = amqp_url();
    for (mode, window) in [("adaptive", None), ("fixed", Some("48"))] {
        let ns = Namespace::new(&format!("window-{mode}"));
        let mut args = vec!["--listen", "127.0.0.1:0", "--amqp", &url, "--namespace", &ns.name];
        args.extend(["--redispatch-after", "2", "--max-jobs", "2"]);
        if let Some(w) = window {
            args.extend(["--window", w]);
        }
        let server = Server::start(&args);
        let stopped = Worker::start(&ns, 1);
        let _working = Worker::start(&ns, 2);
        ns.wait_for_workers(2);
        signal(&stopped.child.0, libc::SIGSTOP);
        let tasks = ns.topology().tasks();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (summaries, max_ready) = std::thread::scope(|s| {
            // One connection, sampling the queue every 20 ms until both jobs have ended.
            let sampler = s.spawn(|| {
                runtime().block_on(async {
                    let broker = vpd::broker::Broker::connect_one(&amqp_url(), "vpd-test-sampler").await.unwrap();
                    let mut tick = tokio::time::interval(Duration::from_millis(20));
                    let mut max = 0;
                    while !done.load(std::sync::atomic::Ordering::SeqCst) {
                        tick.tick().await;
                        max = max.max(broker.queue_stats(&tasks).await.unwrap().0);
                    }
                    broker.close().await;
                    max
                })
            });
            let jobs: Vec<_> = (0..2)
                .map(|j| {
                    let out = dir.path().join(format!("{mode}-{j}.mkv"));
                    let addr = server.addr();
                    let input = input.clone();
                    s.spawn(move || summary(&client(&addr, &input, "blur:ksize=31", &out, &[])))
                })
                .collect();
            let summaries: Vec<_> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (summaries, sampler.join().unwrap())
        });
        for s in &summaries {
            assert_eq!((s.frames, s.failed_frames), (120, 0), "{mode}");
            // The working worker was never starved: it did every frame (the stopped one none).
            assert_eq!(s.workers.values().sum::<u64>(), 120, "{mode}: {:?}", s.workers);
            assert_eq!(s.workers.len(), 1, "{mode}: {:?}", s.workers);
        }
        deepest.push((mode, max_ready));
        signal(&stopped.child.0, libc::SIGCONT);
    }
    let (adaptive, fixed) = (deepest[0].1, deepest[1].1);
    println!("tasks waiting at most: adaptive {adaptive}, fixed {fixed}");
    assert!(adaptive <= 16, "the adaptive window let {adaptive} tasks wait in the queue");
    assert!(
        fixed >= 2 * adaptive.max(16),
        "a fixed window of 48 for two jobs left only {fixed} waiting: the test shows nothing"
    );
}
