//! Durable jobs: a job is the server's once uploaded. It survives a `kill -9` of the server
//! (resumed from its committed segments, its client reconnecting by itself), it can be left
//! and followed again, paused, rerun and fetched, and its kept result expires.

use std::time::Duration;

use serde_json::Value;

use crate::util::cluster::*;
use crate::util::web::get;
use crate::util::*;

/// `vpd jobs ARGS --server ADDR --json`, parsed.
fn jobs(addr: &str, args: &[&str]) -> Value {
    let out = vpd().arg("jobs").args(args).args(["--server", addr, "--json"]).output().unwrap();
    assert!(out.status.success(), "vpd jobs {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `vpd jobs ARGS --server ADDR`: its exit code, stdout and stderr.
fn jobs_cmd(addr: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = vpd().arg("jobs").args(args).args(["--server", addr]).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_string(), stderr(&out))
}

/// A Prometheus counter's value in `/metrics` text.
fn counter(metrics_url: &str, name: &str) -> u64 {
    let (status, _, body) = get(&format!("{metrics_url}metrics"));
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
}

/// The frames a job's record says are committed.
fn committed(addr: &str, id: &str) -> u64 {
    jobs(addr, &["show", id])["committed_frames"].as_u64().unwrap_or(0)
}

#[test]
fn a_server_killed_mid_job_resumes_it_from_its_segments_and_the_client_gets_the_same_frames() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let spec = ClipSpec { frames: 200, width: 320, height: 240, fps: 25.0, face: false };
    let input = clip(dir.path(), spec);
    let chain = "blur:ksize=61";
    let want = reference(&input, chain, &dir.path().join("reference.mkv"));
    let per_segment = 25; // --segment-seconds 1 at 25 fps

    let window = 4;
    let common = [
        "--state-dir",
        state_arg,
        "--threads",
        "1",
        "--window",
        "4",
        "--segment-seconds",
        "1",
        "--metrics",
        "127.0.0.1:0",
    ];
    let first = Server::start(&[&["--listen", "127.0.0.1:0"], &common[..]].concat());
    let addr = first.addr();
    let output = dir.path().join("out.mkv");
    let mut client = spawn_piped(client_cmd(&addr, &input, chain, &output, &["--codec", "ffv1"]));
    assert!(wait_for(Duration::from_secs(60), || jobs(&addr, &[])[0]["state"] == "running"), "the job never ran");
    let id = jobs(&addr, &[])[0]["id"].as_str().unwrap().to_string();
    // About half way: several segments committed.
    assert!(wait_for(Duration::from_secs(120), || committed(&addr, &id) >= 100), "{}", jobs(&addr, &["show", &id]));
    let done_before_kill = counter(first.metrics.as_ref().unwrap(), "vpd_frames_processed_total");
    drop(first); // SIGKILL

    // The same address and state directory: the server resumes the job by itself.
    let second = Server::start(&[&["--listen", addr.as_str()], &common[..]].concat());
    let (code, err) = wait_output(&mut client.0);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("reconnecting"), "{err}");
    assert_same_frames(&output, &want, "vpd run's frames");

    let record = jobs(&addr, &["show", &id]);
    assert_eq!(record["state"], "done", "{record}");
    assert_eq!(record["resumes"].as_u64(), Some(1), "{record}");
    let resumed_at = record["summary"]["resumed_at_frame"].as_u64().expect("resumed from a segment");
    assert_eq!(resumed_at % per_segment, 0);
    assert_eq!(record["summary"]["frames"].as_u64(), Some(200));
    // Frames processed after the restart: what remained, plus at most one segment redone (and
    // the frames that were in flight, at most the window, while that segment was committing).
    let after = counter(second.metrics.as_ref().unwrap(), "vpd_frames_processed_total");
    assert_eq!(after, 200 - resumed_at, "frames before the resume point are never filtered again");
    assert!(after <= (200 - done_before_kill) + per_segment + window, "{after} frames after the restart");
    // The segments are gone once joined; the upload and result are kept.
    assert!(!state.join("jobs").join(&id).join("segments").exists());
    assert!(state.join("jobs").join(&id).join("result.mkv").is_file());
}

#[test]
fn detach_attach_rerun_and_fetch_give_the_same_frames_and_an_expired_result_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 30, ..ClipSpec::default() });
    let want = reference(&input, "edges", &dir.path().join("reference.mkv"));
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1"]);
    let addr = server.addr();

    // --detach: the id on stdout, at once; the job goes on.
    let out = vpd()
        .args([
            "client",
            input.to_str().unwrap(),
            "--server",
            &addr,
            "-f",
            "edges",
            "--codec",
            "ffv1",
            "--detach",
            "-o",
        ])
        .arg(dir.path().join("unused.mkv"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with('j') && id.len() == 13, "{id}");
    assert!(!dir.path().join("unused.mkv").exists());

    // --attach: follows it to its result.
    let attached = dir.path().join("attached.mkv");
    let out =
        vpd().args(["client", "--attach", &id, "--server", &addr, "--json", "-o"]).arg(&attached).output().unwrap();
    let s = summary(&out);
    assert_eq!(s.frames, 30);
    assert_same_frames(&attached, &want, "vpd run's frames");

    // fetch: the kept result, byte for byte.
    let fetched = dir.path().join("fetched.mkv");
    let (code, _, err) = jobs_cmd(&addr, &["fetch", &id, "-o", fetched.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::read(&fetched).unwrap(), std::fs::read(&attached).unwrap());

    // rerun: a new job on the kept upload, the same frames.
    let (code, rerun, err) = jobs_cmd(&addr, &["rerun", &id]);
    assert_eq!(code, Some(0), "{err}");
    assert_ne!(rerun, id);
    let again = dir.path().join("again.mkv");
    let out = vpd().args(["client", "--attach", &rerun, "--server", &addr, "-o"]).arg(&again).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert_same_frames(&again, &want, "vpd run's frames");
    assert_eq!(jobs(&addr, &["show", &rerun])["rerun_of"].as_str(), Some(id.as_str()));

    // Followed into a file of another container: written as it is, with a warning.
    let named = dir.path().join("named.mp4");
    let out = vpd().args(["client", "--attach", &id, "--server", &addr, "-o"]).arg(&named).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("the job's result is a .mkv file"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&named).unwrap(), std::fs::read(&attached).unwrap());

    // An unknown job: not found.
    let out = vpd()
        .args(["client", "--attach", "jnope", "--server", &addr, "-o"])
        .arg(dir.path().join("x.mkv"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no job jnope"), "{}", stderr(&out));
    drop(server);

    // Results kept for no time: removed once the job ends, and the record says so.
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--keep-results", "0"]);
    let addr = server.addr();
    let out = vpd()
        .args(["client", input.to_str().unwrap(), "--server", &addr, "-f", "edges", "--detach", "-o"])
        .arg(dir.path().join("gone.mp4"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        wait_for(Duration::from_secs(60), || !jobs(&addr, &["show", &id])["removed_ms"].is_null()),
        "{}",
        jobs(&addr, &["show", &id])
    );
    assert_eq!(jobs(&addr, &["show", &id])["state"], "done");
    let out = vpd()
        .args(["client", "--attach", &id, "--server", &addr, "-o"])
        .arg(dir.path().join("gone.mp4"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("(expired)") && err.contains("was removed"), "{err}");
    assert!(!dir.path().join("gone.mp4").exists() && partial_files(dir.path()).is_empty());
    let (code, _, err) = jobs_cmd(&addr, &["rerun", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("(expired)"), "{err}");
}

#[test]
fn a_paused_job_publishes_no_tasks_and_resumes_to_the_same_frames() {
    let ns = Namespace::new("pause");
    let dir = tempfile::tempdir().unwrap();
    let spec = ClipSpec { frames: 150, width: 320, height: 240, fps: 25.0, face: false };
    let input = clip(dir.path(), spec);
    let chain = "blur:ksize=61";
    let want = reference(&input, chain, &dir.path().join("reference.mkv"));
    let server = Server::on_broker(&ns, &["--segment-seconds", "1", "--preview", "127.0.0.1:0"]);
    let addr = server.addr();
    let _worker = Worker::start(&ns, 1);
    ns.wait_for_workers(1);
    let output = dir.path().join("out.mkv");
    let mut follower = spawn_piped(client_cmd(&addr, &input, chain, &output, &["--codec", "ffv1"]));
    assert!(wait_for(Duration::from_secs(60), || jobs(&addr, &[])[0]["state"] == "running"), "the job never ran");
    let id = jobs(&addr, &[])[0]["id"].as_str().unwrap().to_string();
    assert!(wait_for(Duration::from_secs(60), || committed(&addr, &id) >= 25), "a segment committed");

    let (code, out, err) = jobs_cmd(&addr, &["pause", &id]);
    assert_eq!((code, out.as_str()), (Some(0), format!("{id} paused").as_str()), "{err}");
    assert!(wait_for(Duration::from_secs(30), || jobs(&addr, &["show", &id])["state"] == "paused"));
    let board = || {
        let jobs = crate::util::web::get_json(&format!("{}jobs", server.preview.clone().unwrap()));
        jobs.as_array().unwrap().iter().find(|j| j["id"] == id.as_str()).cloned().unwrap()
    };
    let tasks = ns.topology().tasks();
    assert!(wait_for(Duration::from_secs(30), || ns.stats(&tasks).0 == 0), "nothing queued while paused");
    let done = board()["progress"]["done"].as_u64().unwrap();
    // Another whole job runs on the same worker meanwhile; the paused one gets nothing.
    let other = client(&addr, &input, "edges", &dir.path().join("other.mkv"), &[]);
    assert_eq!(summary(&other).frames, 150);
    assert_eq!(board()["progress"]["done"].as_u64().unwrap(), done, "the paused job's frames did not move");
    assert_eq!(board()["progress"]["in_flight"].as_u64(), Some(0));
    assert_eq!(board()["status"], "paused");
    assert_eq!(jobs(&addr, &["show", &id])["state"], "paused");

    let (code, out, err) = jobs_cmd(&addr, &["resume", &id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&id), "{out}");
    let (code, err) = wait_output(&mut follower.0);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("is paused"), "{err}");
    assert_same_frames(&output, &want, "vpd run's frames");
    let states: Vec<String> = jobs(&addr, &["show", &id])["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_string())
        .collect();
    assert!(states.windows(2).any(|w| w == ["paused", "queued"]), "{states:?}");
    assert_eq!(states.last().map(String::as_str), Some("done"));
}

#[test]
fn a_full_disk_fails_the_job_keeps_its_segments_and_a_resume_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    // 4 MiB: the upload, the store and two segments of 5 noisy lossless frames; not a third.
    let Some(disk) = SmallDisk::mount(&dir.path().join("state"), "4m") else {
        assert_ne!(unsafe { libc::geteuid() }, 0, "root can mount a tmpfs");
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let input = dir.path().join("noisy.mp4");
    let made = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25,noise=alls=60:allf=t+u"])
        .args(["-frames:v", "50", "-c:v", "libx264", "-crf", "35"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let chain = "blur:ksize=3";
    let want = reference(&input, chain, &dir.path().join("reference.mkv"));
    let state = disk.0.to_str().unwrap();
    let server =
        Server::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--state-dir", state, "--segment-seconds", "0.2"]);
    let addr = server.addr();

    let out = client(&addr, &input, chain, &dir.path().join("out.mkv"), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("(job_failed)") && err.to_lowercase().contains("no space left"), "{err}");
    assert!(!dir.path().join("out.mkv").exists());
    let id = jobs(&addr, &[])[0]["id"].as_str().unwrap().to_string();
    let record = jobs(&addr, &["show", &id]);
    assert_eq!(record["state"], "failed");
    let committed = record["committed_frames"].as_u64().unwrap();
    assert!(committed >= 5 && committed % 5 == 0, "committed segments are kept: {record}");

    // Room again: the job goes on from its committed segments, to the same frames.
    disk.resize("64m");
    let (code, out, err) = jobs_cmd(&addr, &["resume", &id]);
    assert_eq!((code, out), (Some(0), format!("{id} queued")), "{err}");
    let output = dir.path().join("out.mkv");
    let s = summary(
        &vpd().args(["client", "--attach", &id, "--server", &addr, "--json", "-o"]).arg(&output).output().unwrap(),
    );
    assert_eq!(s.resumed_at_frame, Some(committed));
    assert_same_frames(&output, &want, "vpd run's frames");
    drop(server);
}

#[test]
fn a_client_batch_runs_jobs_at_once_reports_a_bad_file_and_skips_what_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let clips = dir.path().join("clips");
    std::fs::create_dir(&clips).unwrap();
    let spec = ClipSpec { frames: 10, width: 160, height: 120, fps: 25.0, face: false };
    for name in ["a", "c"] {
        write_clip(&clips.join(format!("{name}.mkv")), &spec, "FFV1");
    }
    std::fs::write(clips.join("b.mkv"), b"corrupt: not a video").unwrap();
    let out = dir.path().join("blurred");
    std::fs::create_dir(&out).unwrap();
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1"]);
    let inputs: Vec<String> =
        ["a", "b", "c"].iter().map(|n| clips.join(format!("{n}.mkv")).display().to_string()).collect();
    let batch = || {
        let mut cmd = vpd();
        cmd.arg("client").args(&inputs).args(["--server", &server.addr(), "-f", "blur:ksize=5", "--jobs", "2"]);
        cmd.args(["--codec", "ffv1", "--json", "-o"]).arg(&out).output().unwrap()
    };
    let first = batch();
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    let report: Value = serde_json::from_slice(&first.stdout).unwrap();
    let rows = report["files"].as_array().unwrap();
    let outcomes: Vec<&str> = rows.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["done", "failed", "done"]);
    assert!(rows[1]["error"].as_str().unwrap().contains("not a video"), "{}", rows[1]);
    let want = reference(&clips.join("a.mkv"), "blur:ksize=5", &dir.path().join("reference.mkv"));
    assert_same_frames(&out.join("a.mkv"), &want, "vpd run's frames");
    // The server saw all three, two of them done.
    let states: Vec<String> = jobs(&server.addr(), &[])
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states.iter().filter(|s| *s == "done").count(), 2, "{states:?}");

    let before = std::fs::metadata(out.join("c.mkv")).unwrap().modified().unwrap();
    let second = batch();
    let report: Value = serde_json::from_slice(&second.stdout).unwrap();
    let outcomes: Vec<&str> =
        report["files"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["skipped", "failed", "skipped"]);
    assert_eq!(std::fs::metadata(out.join("c.mkv")).unwrap().modified().unwrap(), before);
}

/// A TCP relay on loopback that forwards each connection to `target`, the client's bytes at
/// `bytes_per_s` at most (a slow uplink), and closes both sides when either does.
fn slow_relay(target: String, bytes_per_s: u64) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
            let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let started = std::time::Instant::now();
                let mut sent = 0u64;
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                    // The uplink's pace: no faster than bytes_per_s since the connection began.
                    let due = std::time::Duration::from_secs_f64(sent as f64 / bytes_per_s as f64);
                    if let Some(ahead) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(ahead);
                    }
                }
                let _ = s_write.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

/// A server killed (SIGKILL) half way through an upload: its client reconnects to the server
/// started again and sends only what the server had not safely stored, and the job runs to
/// the same frames as `vpd run`'s.
#[test]
fn an_upload_cut_off_by_a_server_kill_is_resumed_from_what_the_server_kept() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    // Noise in FFV1: about 24 MB, three fsync steps of 8 MiB and more.
    let input = dir.path().join("noisy.mkv");
    let ok = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25,noise=alls=80:allf=t+u"])
        .args(["-frames:v", "80", "-c:v", "ffv1", "-y"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(ok.success());
    let size = std::fs::metadata(&input).unwrap().len();
    assert!(size > 17 << 20, "the clip is {size} bytes");
    let want = reference(&input, "edges", &dir.path().join("reference.mkv"));

    let common = ["--state-dir", state_arg, "--threads", "1"];
    let first = Server::start(&[&["--listen", "127.0.0.1:0"], &common[..]].concat());
    let addr = first.addr();
    // 8 MB/s: the upload takes 3 s.
    let relay = slow_relay(addr.clone(), 8_000_000);
    let output = dir.path().join("out.mkv");
    let mut client = spawn_piped(client_cmd(&relay, &input, "edges", &output, &["--codec", "ffv1"]));
    let uploading = || jobs(&addr, &[]).as_array().and_then(|j| j.first().cloned());
    assert!(wait_for(Duration::from_secs(30), || uploading().is_some()), "the job was never accepted");
    let id = uploading().unwrap()["id"].as_str().unwrap().to_string();
    let partial = state.join("jobs").join(&id).join("upload.partial");
    let half = || std::fs::metadata(&partial).map_or(0, |m| m.len()) >= size / 2;
    assert!(wait_for(Duration::from_secs(30), half), "the upload never reached half way");
    drop(first); // SIGKILL at half way
    assert!(std::fs::metadata(&partial).unwrap().len() < size, "killed before the upload was whole");

    let second = Server::start(&[&["--listen", addr.as_str()], &common[..]].concat());
    let (code, err) = wait_output(&mut client.0);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(&format!("reconnecting to resume job {id}'s upload")), "{err}");
    let held: u64 = err
        .split("the server holds ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the client says what the server held: {err}"));
    assert!(held > 0 && held % (8 << 20) == 0 && held < size, "held {held} of {size}");
    assert_same_frames(&output, &want, "vpd run's frames");
    let record = jobs(&addr, &["show", &id]);
    assert_eq!(record["state"], "done", "{record}");
    assert_eq!(record["error"], Value::Null, "the cut-off note is gone once the upload is whole: {record}");
    assert!(!state.join("jobs").join(&id).join("upload.partial").exists());
    let (code, log) = second.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("kept for its client to resume"), "{log}");
}
