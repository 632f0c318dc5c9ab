//! RabbitMQ past one node: `--amqp` lists a cluster's nodes, tried in order; `--queue-type`
//! picks classic or quorum work queues, and a role that disagrees with the broker says so in
//! one line.

use crate::util::cluster::*;
use crate::util::*;

/// A RabbitMQ URL nothing answers at (nothing listens on port 1).
const DEAD_NODE: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

#[test]
fn roles_given_a_list_of_nodes_pass_over_the_dead_one() {
    let ns = Namespace::new("nodes");
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 20, ..ClipSpec::default() });
    let nodes = format!("{DEAD_NODE},{}", amqp_url());
    let server = Server::start(&["--listen", "127.0.0.1:0", "--amqp", &nodes, "--namespace", &ns.name]);
    let _worker = Worker::start_with(&ns, &["--amqp", &nodes]);
    ns.wait_for_workers(1);
    let output = dir.path().join("out.mkv");
    let s = summary(&client(&server.addr(), &input, "edges", &output, &[]));
    assert_eq!((s.frames, s.failed_frames), (20, 0));
    assert_same_frames(&output, &reference(&input, "edges", &dir.path().join("run.mkv")), "through the second node");
}

#[test]
fn a_job_runs_through_quorum_queues_and_a_classic_role_is_told_in_one_line() {
    let ns = Namespace::undeclared("quorum");
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 20, ..ClipSpec::default() });
    let quorum = ["--queue-type", "quorum"];
    let server = Server::on_broker(&ns, &quorum);
    let _worker = Worker::start_with(&ns, &quorum);
    ns.wait_for_workers(1);
    let output = dir.path().join("out.mkv");
    let s = summary(&client(&server.addr(), &input, "blur,edges", &output, &[]));
    assert_eq!((s.frames, s.failed_frames), (20, 0));
    assert_same_frames(&output, &reference(&input, "blur,edges", &dir.path().join("run.mkv")), "through quorum queues");

    // A worker that expects classic queues there fails at once, naming the fix.
    let mut classic = Worker::start_with(&ns, &[]);
    let (code, stderr) = wait_output(&mut classic.child.0);
    assert_ne!(code, Some(0), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "vpd: the queues of namespace '{}' are quorum queues on this broker, not classic: pass --queue-type quorum, or another --namespace for classic queues",
            ns.name
        ),
        "one line, without RabbitMQ's PRECONDITION_FAILED"
    );
}

#[test]
fn a_quorum_role_in_a_classic_namespace_is_told_too() {
    let ns = Namespace::new("classic");
    let mut worker = Worker::start_with(&ns, &["--queue-type", "quorum"]);
    let (code, stderr) = wait_output(&mut worker.child.0);
    assert_ne!(code, Some(0), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "vpd: the queues of namespace '{}' are classic queues on this broker, not quorum: pass --queue-type classic, or another --namespace for quorum queues",
            ns.name
        )
    );
}

/// A RabbitMQ policy on one namespace's task queue, cleared when dropped.
struct Policy(String);

impl Policy {
    fn set(ns: &Namespace, definition: &str) -> Policy {
        let name = format!("{}-policy", ns.name);
        let pattern = format!("^{}\\.tasks$", ns.name.replace('.', "\\."));
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-q", "set_policy", "--apply-to", "queues", "--priority", "10", &name, &pattern, definition])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Policy(name)
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl").args(["-q", "clear_policy", &self.0]).output();
    }
}

#[test]
fn tasks_the_broker_refuses_are_sent_again_and_never_counted_as_tries() {
    // A task queue that takes one waiting message and refuses the rest (publisher nacks), as a
    // quorum queue does while it elects a leader after its node is lost.
    let ns = Namespace::new("refused");
    let _policy = Policy::set(&ns, r#"{"max-length": 1, "overflow": "reject-publish"}"#);
    let dir = tempfile::tempdir().unwrap();
    // Frames slow enough, and a window wide enough, that most of the window waits refused for
    // several of the server's re-send ticks.
    let input = clip(dir.path(), ClipSpec { frames: 30, width: 640, height: 480, fps: 25.0, face: false });
    let chain = "blur:ksize=151,edges";
    let server = Server::on_broker(&ns, &["--window", "12"]);
    let _worker = Worker::start(&ns, 1);
    ns.wait_for_workers(1);
    let output = dir.path().join("out.mkv");
    let s = summary(&client(&server.addr(), &input, chain, &output, &[]));
    assert_eq!((s.frames, s.failed_frames), (30, 0), "{s:?}");
    // The refused publishes were not tries: nothing was redelivered or re-dispatched.
    assert_eq!(s.retries, 0, "{s:?}");
    assert_same_frames(&output, &reference(&input, chain, &dir.path().join("run.mkv")), "through a refusing queue");
}
