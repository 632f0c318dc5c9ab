//! Logs a person can follow: with two jobs running at once, every line from inside a job's
//! threads says which job (and which connection) it is about.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::util::cluster::*;
use crate::util::*;

#[test]
fn two_jobs_at_once_log_under_their_own_job_and_connection() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mkv");
    write_clip(&input, &ClipSpec { frames: 30, ..ClipSpec::default() }, "ffv1");
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "2", "--log-format", "json", "-vv"]);
    let outputs = [dir.path().join("a.mkv"), dir.path().join("b.mkv")];
    std::thread::scope(|s| {
        let jobs: Vec<_> =
            outputs.iter().map(|o| s.spawn(|| client(&server.addr(), &input, "edges", o, &[]))).collect();
        for job in jobs {
            summary(&job.join().unwrap());
        }
    });
    let (code, log) = server.stop();
    assert_eq!(code, Some(0));
    let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let message = |l: &Value| l["fields"]["message"].as_str().unwrap_or_default().to_string();
    // Each job's id and its client's address, from the line that accepted it.
    let accepted: BTreeSet<(String, String)> = lines
        .iter()
        .filter(|l| message(l) == "job accepted")
        .map(|l| (l["fields"]["job"].as_str().unwrap().to_string(), l["fields"]["peer"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(accepted.len(), 2, "{log}");
    // Lines logged by the pipeline's own threads (the source's and the writer's), once per job,
    // carry the job's span and its connection's.
    for what in ["the input ended", "every frame written"] {
        let seen: BTreeSet<(String, String)> = lines
            .iter()
            .filter(|l| message(l) == what)
            .map(|l| {
                let spans = l["spans"].as_array().unwrap_or_else(|| panic!("no spans on {l}"));
                let field = |name: &str, key: &str| {
                    spans
                        .iter()
                        .find(|s| s["name"] == name)
                        .and_then(|s| s[key].as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                (field("job", "job"), field("conn", "peer"))
            })
            .collect();
        assert_eq!(seen, accepted, "'{what}' lines name their own job and connection");
    }
}
