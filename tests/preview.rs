//! The live preview: the dashboard's HTTP API, its event stream and `/metrics`, served by a
//! server itself and by `vpd preview` from RabbitMQ, checked against the client's summary; and
//! the page itself, rendered by a real headless Chromium.

use std::path::Path;
use std::time::Duration;

use opencv::prelude::*;
use serde_json::Value;
use vpd::metrics::JobSummary;

use crate::util::cluster::*;
use crate::util::web::*;
use crate::util::*;

/// The job's summary as a dashboard reports it, with the client's own paths (the server's are
/// its work files), so that the two compare whole.
fn reported_summary(view: &Value, client: &JobSummary) -> JobSummary {
    let mut s: JobSummary = serde_json::from_value(view["summary"].clone()).expect("a finished job has its summary");
    s.input.clone_from(&client.input);
    s.output.clone_from(&client.output);
    s
}

/// Checks a dashboard's `/metrics` after exactly one finished job, `s`.
fn assert_metrics_match(base: &str, s: &JobSummary) -> String {
    let (status, content_type, body) = get(&format!("{base}metrics"));
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = String::from_utf8(body).unwrap();
    promtool_check(&text);
    assert_eq!(sample(&text, "vpd_frames_processed_total"), s.frames as f64);
    assert_eq!(sample(&text, "vpd_frames_failed_total"), s.failed_frames as f64);
    assert_eq!(sample(&text, "vpd_frames_retried_total"), s.retries as f64);
    assert_eq!(sample(&text, "vpd_jobs_total{outcome=\"done\"}"), 1.0);
    assert_eq!(sample(&text, "vpd_jobs_total{outcome=\"failed\"}"), 0.0);
    assert_eq!(sample(&text, "vpd_frame_latency_seconds_count"), s.frames as f64);
    assert_eq!(sample(&text, "vpd_frame_latency_seconds_bucket{le=\"+Inf\"}"), s.frames as f64);
    assert_eq!(sample(&text, "vpd_job_duration_seconds_count"), 1.0);
    assert!((sample(&text, "vpd_job_duration_seconds_sum") - s.wall_seconds).abs() < 1e-6);
    assert_eq!(sample(&text, "vpd_jobs_running"), 0.0);
    assert_eq!(sample(&text, "vpd_frames_in_flight"), 0.0);
    assert_eq!(sample(&text, "vpd_workers_seen"), s.workers.len() as f64);
    text
}

/// Decodes a thumbnail and checks it has the video's shape, downscaled.
fn assert_thumbnail(jpeg: &[u8], width: u32, height: u32) {
    assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff], "a JPEG");
    let image =
        opencv::imgcodecs::imdecode(&opencv::core::Vector::from_slice(jpeg), opencv::imgcodecs::IMREAD_COLOR).unwrap();
    assert!(!image.empty(), "the thumbnail decodes");
    assert!(image.cols() <= 320 && image.cols() > 0, "downscaled: {}x{}", image.cols(), image.rows());
    let (got, want) = (image.cols() as f64 / image.rows() as f64, width as f64 / height as f64);
    assert!((got - want).abs() / want < 0.02, "aspect {got:.3}, video's {want:.3}");
}

#[test]
fn a_server_dashboard_shows_the_job_live_and_agrees_with_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 90, width: 640, height: 360, fps: 25.0, face: false });
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--preview",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let (dash, metrics) = (server.preview.clone().unwrap(), server.metrics.clone().unwrap());
    for base in [&dash, &metrics] {
        assert_eq!(get(&format!("{base}healthz")), (200, "text/plain; charset=utf-8".into(), b"ok\n".to_vec()));
    }
    // Nothing yet: an empty list, and 404s naming what is missing.
    assert_eq!(get_json(&format!("{dash}jobs")), Value::Array(vec![]));
    let (status, _, body) = get(&format!("{dash}jobs/j000000000000/frame.jpg"));
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert_eq!(get(&format!("{dash}nothing")).0, 404);
    assert_eq!(get(&format!("{metrics}jobs")).0, 404, "the metrics listener serves only /metrics and /healthz");
    let (status, content_type, page) = get(&dash);
    assert_eq!((status, content_type.as_str()), (200, "text/html; charset=utf-8"));
    assert!(String::from_utf8_lossy(&page).contains("<script src=\"app.js\""));

    let events = EventStream::open(&format!("{dash}events"));
    let first = events.next(Duration::from_secs(10)).unwrap();
    assert_eq!((first.name.as_str(), &first.data["jobs"]), ("snapshot", &Value::Array(vec![])));

    let output = dir.path().join("out.mkv");
    let (job, seen_running) = std::thread::scope(|s| {
        let job = s.spawn(|| client(&server.addr(), &input, "blur:ksize=31", &output, &[]));
        // While it runs, /jobs lists it as running, part done.
        let running = wait_for(Duration::from_secs(60), || {
            get_json(&format!("{dash}jobs")).as_array().unwrap().iter().any(|j| {
                let p = &j["progress"];
                j["status"] == "running" && p["done"].as_u64().unwrap() > 0 && p["done"].as_u64() < p["total"].as_u64()
            })
        });
        (job.join().unwrap(), running)
    });
    assert!(seen_running, "/jobs showed the job running, part done");
    let s = summary(&job);
    assert_eq!((s.frames, s.failed_frames), (90, 0));

    // The event stream: progress only goes up, reaches 100 %, and the job ends done.
    let (mut last_percent, mut last_done, mut frames, mut between) = (0.0, 0, 0, false);
    let mut ran = false;
    let done = loop {
        let e = events.next(Duration::from_secs(30)).expect("the stream stays open while the server runs");
        match e.name.as_str() {
            "job" => {
                let (percent, done) =
                    (e.data["percent"].as_f64().unwrap(), e.data["progress"]["done"].as_u64().unwrap());
                assert!(
                    percent >= last_percent && done >= last_done,
                    "progress went back: {} after {last_percent}",
                    e.data
                );
                between |= percent > 0.0 && percent < 100.0;
                (last_percent, last_done) = (percent, done);
                if e.data["status"] == "done" {
                    break e.data;
                }
                // Queued while it waits for its slot, never once it ran; then running.
                if e.data["status"] == "queued" {
                    assert!(!ran && done == 0, "queued after it ran: {}", e.data);
                    continue;
                }
                assert_eq!(e.data["status"], "running");
                ran = true;
            }
            "frame" => frames += 1,
            other => panic!("unexpected event {other}: {}", e.data),
        }
    };
    assert!(between, "progress was streamed while the job ran, not only at its end");
    assert_eq!((last_percent, last_done), (100.0, 90));
    assert!(frames >= 1, "thumbnails were announced");
    assert!(
        frames <= 2 + (s.wall_seconds / 0.4).ceil() as u32,
        "thumbnails are rate-limited: {frames} in {:.1} s",
        s.wall_seconds
    );

    // After: the same numbers in /jobs, /jobs/{id} and /metrics as in the client's summary.
    let id = done["id"].as_str().unwrap().to_string();
    let jobs = get_json(&format!("{dash}jobs"));
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    assert_eq!(jobs[0]["status"], "done");
    let view = get_json(&format!("{dash}jobs/{id}"));
    assert_eq!(view, done, "/jobs/{{id}} is what the stream said last");
    assert_eq!(reported_summary(&view, &s), s);
    assert_eq!(
        (view["progress"]["done"].as_u64(), view["progress"]["failed"].as_u64(), view["progress"]["retries"].as_u64()),
        (Some(90), Some(0), Some(s.retries))
    );
    assert_eq!(view["filters"], "blur:ksize=31:sigma=0");
    let (status, content_type, jpeg) = get(&format!("{dash}jobs/{id}/frame.jpg"));
    assert_eq!((status, content_type.as_str()), (200, "image/jpeg"));
    assert_thumbnail(&jpeg, 640, 360);
    assert_eq!(view["frame_index"], 89, "the last frame written is the last thumbnail");
    let from_metrics = assert_metrics_match(&metrics, &s);
    let from_dash = assert_metrics_match(&dash, &s);
    assert_eq!(from_metrics, from_dash, "both listeners serve the same board");

    // A graceful stop ends the open event stream, and the server exits promptly.
    let (code, err) = server.stop();
    assert_eq!(code, Some(0), "{err}");
    while let Some(e) = events.next(Duration::from_secs(10)) {
        assert_ne!(e.name, "snapshot", "no new stream after shutdown");
    }
}

#[test]
fn a_standalone_preview_follows_the_cluster_and_survives_a_broker_cut() {
    let ns = Namespace::new("preview");
    let mut preview = Preview::start(&ns);
    let dash = preview.url.clone();
    let connected = |base: &str| {
        let (_, _, body) = get(&format!("{base}metrics"));
        String::from_utf8(body).unwrap().contains("\nvpd_broker_connected 1\n")
    };
    assert!(wait_for(Duration::from_secs(30), || connected(&dash)), "the preview subscribed to the events");
    let server = Server::on_broker(&ns, &["--metrics", "127.0.0.1:0"]);
    let (workers, worker_metrics): (Vec<_>, Vec<_>) = (0..2).map(|_| Worker::with_metrics(&ns, 1)).unzip();
    ns.wait_for_workers(2);
    let events = EventStream::open(&format!("{dash}events"));
    assert_eq!(events.next(Duration::from_secs(10)).unwrap().name, "snapshot");

    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 60, width: 480, height: 360, fps: 25.0, face: false });
    let output = dir.path().join("out.mkv");
    let (job, late) = std::thread::scope(|s| {
        let job = s.spawn(|| client(&server.addr(), &input, "blur:ksize=21,edges", &output, &[]));
        loop {
            let e = events.next(Duration::from_secs(60)).unwrap();
            if e.name == "job" && e.data["progress"]["done"].as_u64().unwrap() >= 5 {
                break;
            }
        }
        // A preview that starts mid-job. The workers wait (frozen) until it listens, so the
        // job cannot end before it hears anything.
        for w in &workers {
            signal(&w.child.0, libc::SIGSTOP);
        }
        let late = Preview::start(&ns);
        let listening = wait_for(Duration::from_secs(30), || connected(&late.url));
        for w in &workers {
            signal(&w.child.0, libc::SIGCONT);
        }
        assert!(listening, "the late preview subscribed");
        (job.join().unwrap(), late)
    });
    let s = summary(&job);
    assert_eq!((s.frames, s.failed_frames), (60, 0));

    let id = loop {
        let e = events.next(Duration::from_secs(30)).unwrap();
        if e.name == "job" && e.data["status"] == "done" {
            break e.data["id"].as_str().unwrap().to_string();
        }
    };
    let view = get_json(&format!("{dash}jobs/{id}"));
    assert_eq!(reported_summary(&view, &s), s);
    assert_eq!(view["filters"], s.filters);
    let text = assert_metrics_match(&dash, &s);
    assert!(text.contains("\nvpd_tasks_queue_depth "), "the task queue's depth is a gauge:\n{text}");
    assert_metrics_match(server.metrics.as_deref().unwrap(), &s);
    // The late preview saw the job from its next event on, to the same end.
    // It hears the end on its own queue, perhaps a moment after the first preview.
    let late_job = format!("{}jobs/{id}", late.url);
    wait_for(Duration::from_secs(10), || {
        let (status, _, body) = get(&late_job);
        status == 200 && serde_json::from_slice::<Value>(&body).unwrap()["status"] == "done"
    });
    let late_view = get_json(&late_job);
    assert_eq!(late_view["status"], "done");
    assert_eq!(reported_summary(&late_view, &s), s);
    assert_eq!(late_view["filters"], s.filters, "known from the summary though it missed the start");
    let (status, _, jpeg) = get(&format!("{}jobs/{id}/frame.jpg", late.url));
    assert_eq!(status, 200);
    assert_thumbnail(&jpeg, 480, 360);

    // Each worker's own /metrics counts the frames the summary credits it with.
    for (worker, base) in workers.iter().zip(&worker_metrics) {
        let pid = worker.child.0.id();
        let credited = s.workers.iter().find(|(w, _)| w.ends_with(&format!(":{pid}"))).map_or(0, |(_, n)| *n);
        let scrape = || {
            let (status, _, body) = get(&format!("{base}metrics"));
            assert_eq!(status, 200);
            String::from_utf8(body).unwrap()
        };
        // A worker counts a frame once its ack is sent, which can be just after the server has
        // the result: wait for the last ack rather than race it.
        let settled = |text: &str| {
            sample(text, "vpd_worker_frames_processed_total") == credited as f64
                && sample(text, "vpd_worker_tasks_in_hand") == 0.0
        };
        wait_for(Duration::from_secs(10), || settled(&scrape()));
        let text = scrape();
        promtool_check(&text);
        assert_eq!(sample(&text, "vpd_worker_frames_processed_total"), credited as f64, "worker {pid}:\n{text}");
        assert_eq!(sample(&text, "vpd_worker_filter_seconds_count"), credited as f64);
        assert_eq!(sample(&text, "vpd_worker_tasks_in_hand"), 0.0);
        assert_eq!(sample(&text, "vpd_worker_broker_connected"), 1.0);
    }

    // Cut the preview's broker connection: the page hears it is down, then up again.
    if !can_cut_connections() {
        eprintln!("skipped the broker cut: needs rabbitmqctl beside the broker");
        return;
    }
    // The page too: every state its broker badge takes is recorded as it changes.
    let mut browser = Browser::launch();
    browser.navigate(&dash);
    let watching = "(() => { const pill = document.querySelector('#broker'); \
                    if (!pill || pill.dataset.state !== 'up') return false; \
                    window.brokerStates = []; \
                    new MutationObserver(() => window.brokerStates.push(pill.dataset.state + ' ' + pill.textContent)) \
                      .observe(pill, { attributes: true, childList: true, characterData: true, subtree: true }); \
                    return true; })()";
    assert!(browser.wait_until(Duration::from_secs(30), watching), "the page shows the broker connected");
    cut_connection("vpd-preview", preview.child.0.id());
    let mut states = Vec::new();
    while states.last() != Some(&true) || !states.contains(&false) {
        let e = events.next(Duration::from_secs(60)).expect("the stream stays open");
        if e.name == "link" {
            states.push(e.data["broker_connected"].as_bool().unwrap());
        }
    }
    assert!(connected(&dash), "reconnected");
    let shown = "(() => { const s = window.brokerStates; \
                 return s.some(t => t.startsWith('down RabbitMQ lost')) && s[s.length - 1].startsWith('up RabbitMQ connected'); })()";
    let said = browser.wait_until(Duration::from_secs(30), shown);
    assert!(said, "the page said the broker was lost, then connected: {}", browser.eval("window.brokerStates"));

    // SIGTERM: the preview ends its event streams (the browser's and ours) and exits 0.
    signal(&preview.child.0, libc::SIGTERM);
    let (code, err) = wait_output(&mut preview.child.0);
    assert_eq!(code, Some(0), "{err}");
    while events.next(Duration::from_secs(10)).is_some() {}
}

#[test]
fn the_dashboard_renders_the_job_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    // The sample video: its screenshots show what a user would see (they illustrate the README).
    let input = asset("sample.mp4");
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "2", "--preview", "127.0.0.1:0"]);
    let dash = server.preview.clone().unwrap();
    let mut browser = Browser::launch();
    browser.navigate(&dash);
    assert!(
        browser.wait_until(Duration::from_secs(30), "document.querySelector('#stream')?.dataset.state === 'live'"),
        "the page opened its event stream"
    );
    assert_eq!(browser.eval("document.querySelector('#no-jobs').hidden"), Value::Bool(false));

    let output = dir.path().join("out.mkv");
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let job = std::thread::scope(|s| {
        let job = s.spawn(|| client(&server.addr(), &input, "edges", &output, &[]));
        let running = "(() => { const r = document.querySelector('#jobs tbody tr[data-status=running]'); \
                       return !!r && +r.dataset.percent >= 25 && +r.dataset.percent < 100; })()";
        assert!(browser.wait_until(Duration::from_secs(60), running), "the page showed the job running");
        browser.screenshot(&artifacts.join("dashboard-running.png"));
        job.join().unwrap()
    });
    let s = summary(&job);
    let id = get_json(&format!("{dash}jobs"))[0]["id"].as_str().unwrap().to_string();
    let finished = format!(
        "(() => {{ const r = document.querySelector('#jobs tr[data-job=\"{id}\"]'); const img = document.querySelector('#frame'); \
         return !!r && r.dataset.status === 'done' && r.dataset.percent === '100' \
         && r.querySelector('.percent').textContent === '100%' \
         && img.complete && img.naturalWidth > 0 && img.src.includes('{id}') \
         && img.dataset.index === '{last}'; }})()",
        last = s.frames - 1
    );
    let done = browser.wait_until(Duration::from_secs(30), &finished);
    browser.screenshot(&artifacts.join("dashboard-done.png"));
    assert!(done, "the page showed the job done at 100 % with its last frame: {}", artifacts.display());
    let cells = browser.eval(&format!(
        "Array.from(document.querySelectorAll('#jobs tr[data-job=\"{id}\"] td')).map(td => td.textContent)"
    ));
    assert_eq!(cells[4], format!("{0} / {0}", s.frames), "{cells}");
    assert_eq!(cells[7], s.retries.to_string());
    let (w, h) = (
        browser.eval("document.querySelector('#frame').naturalWidth"),
        browser.eval("document.querySelector('#frame').naturalHeight"),
    );
    assert_eq!((w.as_u64(), h.as_u64()), (Some(320), Some(180)), "the thumbnail shown is the job's");
    let workers = browser.eval("document.querySelectorAll('#workers tbody tr').length");
    assert_eq!(workers.as_u64(), Some(s.workers.len() as u64));

    // The server goes away: the page says it is reconnecting.
    let (code, err) = server.stop();
    assert_eq!(code, Some(0), "{err}");
    let reconnecting = "!document.querySelector('#banner').hidden \
                        && document.querySelector('#stream').dataset.state === 'reconnecting'";
    assert!(browser.wait_until(Duration::from_secs(30), reconnecting), "the page shows it lost the stream");
    eprintln!("screenshots in {}", artifacts.display());
}

/// Behind a token, a browser gets the sign-in form and nothing else until it signs in, here by
/// opening `/?token=…` once; then the page, its API and its event stream work from the session
/// cookie, and the address no longer shows the token.
/// The token is base64's kind (`+`, `/`, `=`), which the address carries percent-encoded.
#[test]
fn a_browser_signs_in_to_a_dashboard_behind_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 12, ..ClipSpec::default() });
    let token = "dashboard+token/0123456789==";
    let server =
        Server::start(&["--listen", "127.0.0.1:0", "--threads", "2", "--preview", "127.0.0.1:0", "--token", token]);
    let dash = server.preview.clone().unwrap();
    let mut browser = Browser::launch();
    browser.navigate(&dash);
    // Without the token: the sign-in form, and no event stream (it wants the token too).
    let refused = "document.querySelector('#signin')?.hidden === false && document.querySelector('#stream').dataset.state === 'connecting'";
    assert!(browser.wait_until(Duration::from_secs(30), refused), "the page asks for the token");
    let (status, _, _) = get(&format!("{dash}events"));
    assert_eq!(status, 401, "the event stream wants the token");
    let encoded: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    assert_ne!(encoded, token);
    browser.navigate(&format!("{dash}?token={encoded}"));
    assert!(
        browser.wait_until(Duration::from_secs(30), "document.querySelector('#stream')?.dataset.state === 'live'"),
        "the page opened its event stream with the cookie"
    );
    assert_eq!(browser.eval("location.search"), Value::String(String::new()), "the token left the address");
    let s = summary(&client(&server.addr(), &input, "edges", &dir.path().join("out.mkv"), &["--token", token]));
    assert_eq!(s.frames, 12);
    let done = "!!document.querySelector('#jobs tbody tr[data-status=done]')";
    assert!(browser.wait_until(Duration::from_secs(30), done), "the page showed the job done");
}
