//! The job store: a server's history in a real SQLite file, through restarts and crashes, as
//! `vpd jobs` and the dashboard show it; a store that cannot be used stops the start.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::util::cluster::*;
use crate::util::web::get_json;
use crate::util::*;

/// `vpd jobs ARGS --server ADDR --json`, parsed.
fn jobs(addr: &str, args: &[&str]) -> Value {
    let out = vpd().arg("jobs").args(args).args(["--server", addr, "--json"]).output().unwrap();
    assert!(out.status.success(), "vpd jobs {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn history_survives_a_restart_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 20, ..ClipSpec::default() });
    let garbage = dir.path().join("notes.mp4");
    std::fs::write(&garbage, b"not a video at all").unwrap();

    let server = Server::start(&["--listen", "127.0.0.1:0", "--state-dir", state_arg, "--threads", "1"]);
    let out = client(&server.addr(), &input, "edges", &dir.path().join("a.mkv"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = summary(&out);
    let failed = client(&server.addr(), &garbage, "edges", &dir.path().join("b.mkv"), &[]);
    assert!(!failed.status.success());
    drop(server); // SIGKILL: whatever the store has, it has on disk

    // A restarted server lists both, newest first, and shows everything recorded.
    let server = Server::start(&["--listen", "127.0.0.1:0", "--state-dir", state_arg, "--preview", "127.0.0.1:0"]);
    let list = jobs(&server.addr(), &[]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!((list[0]["state"].as_str(), list[1]["state"].as_str()), (Some("failed"), Some("done")));
    assert!(list[0]["error"].as_str().unwrap().contains("not a video"), "{}", list[0]);
    let id = list[1]["id"].as_str().unwrap();
    let shown = jobs(&server.addr(), &["show", id]);
    assert_eq!(shown["input_sha256"].as_str(), Some(sha256(&input).as_str()));
    assert_eq!(shown["input_bytes"].as_u64(), Some(std::fs::metadata(&input).unwrap().len()));
    assert_eq!(shown["chain"], "edges:low=50:high=150");
    assert_eq!(shown["frames"].as_u64(), Some(summary.frames));
    assert_eq!(shown["summary"]["frames"].as_u64(), Some(summary.frames));
    assert_eq!(shown["output_bytes"].as_u64(), Some(std::fs::metadata(dir.path().join("a.mkv")).unwrap().len()));
    let states: Vec<&str> =
        shown["transitions"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["uploading", "queued", "running", "done"]);
    // Its dashboard shows yesterday's jobs too.
    let board = get_json(&format!("{}jobs", server.preview.clone().unwrap()));
    let ids: Vec<&str> = board.as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&id), "{ids:?}");
    // So does a new preview beside it, from the store, before any event.
    let ns = Namespace::new("history");
    let mut preview = vpd()
        .args(["preview", "--listen", "127.0.0.1:0", "--amqp", &amqp_url(), "--namespace", &ns.name])
        .args(["--state-dir", state_arg])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = announced(&mut preview, "preview");
    let _preview = crate::util::ChildGuard(preview);
    let listed = get_json(&format!("{url}jobs"));
    let states: Vec<(&str, &str)> =
        listed.as_array().unwrap().iter().map(|j| (j["id"].as_str().unwrap(), j["status"].as_str().unwrap())).collect();
    assert!(states.contains(&(id, "done")), "{states:?}");
    // An unknown job: its own error.
    let out = vpd().args(["jobs", "show", "jnope", "--server", &server.addr()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no job jnope"), "{}", stderr(&out));
    drop(server);

    // `vpd jobs cancel`: the running job stops, its client is told, the record says so.
    let slow = clip(dir.path(), ClipSpec { frames: 300, width: 640, height: 480, ..ClipSpec::default() });
    let server = Server::start(&["--listen", "127.0.0.1:0", "--state-dir", state_arg, "--threads", "1"]);
    let addr = server.addr();
    let job = spawn_piped(client_cmd(&addr, &slow, "blur:ksize=151", &dir.path().join("d.mkv"), &[]));
    assert!(
        wait_for(std::time::Duration::from_secs(60), || jobs(&addr, &[])[0]["state"] == "running"),
        "the job never ran"
    );
    let id = jobs(&addr, &[])[0]["id"].as_str().unwrap().to_string();
    let out = vpd().args(["jobs", "cancel", &id, "--server", &addr]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("cancelling {id}"));
    let mut job = job;
    let status = job.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(job.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("job cancelled"), "{err}");
    assert!(
        wait_for(std::time::Duration::from_secs(10), || jobs(&addr, &["show", &id])["state"] == "cancelled"),
        "{}",
        jobs(&addr, &["show", &id])
    );
    // An ended job cannot be cancelled; an unknown one is not found.
    let out = vpd().args(["jobs", "cancel", &id, "--server", &addr]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("has ended (cancelled)"), "{}", stderr(&out));
    drop(server);

    // A server killed during an upload before any of it was safely stored (an fsync step of
    // 8 MiB): the next server records the job as failed, and why. (An upload with more stored
    // waits for its client to resume it, and a job killed after its upload resumes: see
    // durable.rs.)
    let server = Server::start(&["--listen", "127.0.0.1:0", "--state-dir", state_arg, "--threads", "1"]);
    let addr = server.addr();
    let mut raw = crate::util::raw::Raw::connect(&addr);
    raw.hello(None);
    raw.recv();
    raw.send(&crate::util::raw::submit("edges", 100_000));
    assert!(matches!(raw.recv(), Some(vpd::protocol::message::ServerMessage::Accepted { .. })));
    raw.chunk(&[0u8; 10_000]);
    assert!(
        wait_for(std::time::Duration::from_secs(30), || jobs(&addr, &[])[0]["state"] == "uploading"),
        "the upload never started"
    );
    drop(server);
    drop(raw);
    let server = Server::start(&["--listen", "127.0.0.1:0", "--state-dir", state_arg]);
    let list = jobs(&server.addr(), &[]);
    assert_eq!(list.as_array().unwrap().len(), 4);
    assert_eq!(list[0]["state"], "failed");
    assert!(list[0]["error"].as_str().unwrap().contains("during the upload"), "{}", list[0]);
    let id = list[0]["id"].as_str().unwrap();
    assert!(!state.join("jobs").join(id).exists(), "nothing of it is left");
}

#[test]
fn a_store_that_cannot_be_used_stops_the_start_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let start = |state: &Path| {
        vpd().args(["server", "--listen", "127.0.0.1:0", "--state-dir", state.to_str().unwrap()]).output().unwrap()
    };

    // Not a database: named, refused, kept.
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    let notes = b"SQLite format 3? no: someone's notes".repeat(200);
    std::fs::write(corrupt.join("vpd.db"), &notes).unwrap();
    let out = start(&corrupt);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&corrupt.join("vpd.db").display().to_string()) && err.contains("left as it is"), "{err}");
    assert_eq!(std::fs::read(corrupt.join("vpd.db")).unwrap(), notes);

    // A state directory that cannot be made (its parent is a file).
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let out = start(&file.join("state"));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot create the state directory"), "{err}");
}
