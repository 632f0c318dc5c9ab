//! Fuzz targets for everything vpd decodes from strangers: the client ⇄ server packet codec,
//! tasks and results from the broker, filter chains and presets, the config file, and the HTTP
//! routes the server resolves itself.
//!
//! Stable Rust has no cargo-fuzz (it needs nightly). These targets mutate a committed corpus
//! (`fuzz/corpus/TARGET/`, valid inputs of each kind) with proptest: each case is a corpus entry
//! and a list of byte-level mutations (flips, overwrites, inserts, deletes, splices, lengths set
//! to extremes), so a failure shrinks to the fewest mutations that still break, and is written
//! into the corpus as `crash-HASH`, replayed by every later run. `make test` replays the corpus
//! and a few thousand mutations per target; `make fuzz` runs `FUZZ_CASES` (10 million) each in
//! release mode and prints inputs per second.
//!
//! Every target asserts more than "no panic": decoded values re-encode to what decodes the
//! same, limits hold, and a route's job id never holds a `/`.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use opencv::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use vpd::filters::Chain;
use vpd::protocol::codec::{MAX_CHUNK_BYTES, MAX_CONTROL_BYTES, Packet, PacketReader};
use vpd::protocol::message::{ClientMessage, ServerMessage};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "fuzz/corpus/{target} is empty");
    entries
}

/// One mutation: what, where (a fraction of the length), and a byte.
type Mutation = (u8, u16, u8);

fn mutate(seed: &[u8], other: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for &(op, at, byte) in mutations {
        let pos = |len: usize| if len == 0 { 0 } else { usize::from(at) * len / 65536 };
        match op % 8 {
            0 if !v.is_empty() => {
                let i = pos(v.len());
                v[i] ^= 1 << (byte % 8);
            }
            1 if !v.is_empty() => {
                let i = pos(v.len());
                v[i] = byte;
            }
            2 => {
                let i = pos(v.len() + 1);
                v.insert(i, byte);
            }
            3 if !v.is_empty() => {
                let i = pos(v.len());
                let n = (usize::from(byte) % 16 + 1).min(v.len() - i);
                v.drain(i..i + n);
            }
            4 => {
                // A splice: the tail of another corpus entry.
                let i = pos(v.len() + 1);
                let j = pos(other.len() + 1);
                v.truncate(i);
                v.extend_from_slice(&other[j.min(other.len())..]);
            }
            5 if v.len() >= 4 => {
                // A 32-bit field set to an extreme: lengths, counts, sizes.
                let i = pos(v.len() - 3);
                let value: u32 = [0, 1, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff][usize::from(byte) % 7];
                let bytes = if byte & 0x80 == 0 { value.to_be_bytes() } else { value.to_le_bytes() };
                v[i..i + 4].copy_from_slice(&bytes);
            }
            6 => v.truncate(pos(v.len() + 1)),
            _ => {
                // Repeat a slice: deep nesting and long runs.
                let i = pos(v.len() + 1);
                let piece: Vec<u8> = v[i..(i + 8).min(v.len())].to_vec();
                for _ in 0..(byte % 32) {
                    v.splice(i..i, piece.iter().copied());
                }
            }
        }
    }
    v
}

/// Replays the corpus through `check`, then runs `FUZZ_CASES` mutations of it (default 3000),
/// writing any failure, shrunk, into the corpus.
fn fuzz(target: &str, check: impl Fn(&[u8]) + Send + Sync) {
    let seeds = corpus(target);
    for (name, input) in &seeds {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(input))) {
            std::panic::resume_unwind(Box::new(format!("fuzz/corpus/{target}/{name}: {panic:?}")));
        }
    }
    let cases: u32 = std::env::var("FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(3000);
    let inputs: Vec<Vec<u8>> = seeds.into_iter().map(|(_, v)| v).collect();
    let n = inputs.len();
    let strategy = (0..n, 0..n, proptest::collection::vec(any::<Mutation>(), 1..6))
        .prop_map(move |(a, b, m)| mutate(&inputs[a], &inputs[b], &m));
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 20_000, ..Config::with_cases(cases) };
    let mut runner = TestRunner::new(config);
    let start = Instant::now();
    let result = runner.run(&strategy, |input| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)))
            .map_err(|p| TestCaseError::fail(format!("{:?}", p.downcast_ref::<String>().map(String::as_str))))
    });
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "fuzz {target}: {cases} inputs in {seconds:.1} s, {:.0} inputs/s, corpus {n}",
        f64::from(cases) / seconds.max(1e-9)
    );
    if let Err(TestError::Fail(why, input)) = result {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        input.hash(&mut h);
        let path = corpus_dir(target).join(format!("crash-{:016x}", h.finish()));
        std::fs::write(&path, &input).unwrap();
        panic!("fuzz {target}: {why}; the input is in {}", path.display());
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().build().unwrap();
}

/// Reads every packet the bytes hold, as the server (client messages) and as the client (server
/// messages) would, until the stream ends or a packet is refused.
fn packets(bytes: &[u8]) {
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut reader = PacketReader::new(bytes);
            while let Ok(Some(packet)) = reader.read::<ClientMessage>().await {
                if let Packet::Chunk(data) = &packet {
                    assert!(data.len() <= MAX_CHUNK_BYTES);
                }
                if let Packet::Message(m) = packet {
                    // What was read re-encodes within the limit, and reads back the same.
                    let frame = vpd::protocol::codec::encode_control(&m).unwrap();
                    assert!(frame.len() <= MAX_CONTROL_BYTES + 5);
                    let again = PacketReader::new(&frame[..]).read::<ClientMessage>().await.unwrap();
                    assert!(matches!(again, Some(Packet::Message(ref a)) if *a == m), "{m:?} changed: {again:?}");
                }
            }
            let mut reader = PacketReader::new(bytes);
            while let Ok(Some(_)) = reader.read::<ServerMessage>().await {}
        })
    })
}

#[test]
fn packet_codec() {
    fuzz("packet", packets);
}

#[test]
fn task_and_result_decoding() {
    fuzz("task", |bytes| {
        if let Ok((header, frame, previous)) =
            vpd::protocol::wire::decode_task(bytes, vpd::protocol::wire::MAX_FRAME_PIXELS)
        {
            // A decoded frame is the size its header says, never larger than the limits allow.
            assert_eq!((frame.cols() as u32, frame.rows() as u32), (header.frame.width, header.frame.height));
            if let Some(p) = previous {
                assert_eq!(p.size().unwrap(), frame.size().unwrap());
            }
        }
        let _ = vpd::protocol::wire::decode_result(bytes, None, Some((64, 48)));
    });
}

fn chains(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(chain) = Chain::from_str(&text) {
        // A chain that parses prints as text that parses to the same chain.
        let printed = chain.to_string();
        assert_eq!(Chain::from_str(&printed).unwrap(), chain, "{text:?} printed as {printed:?}");
    }
    // The same text as a user preset: accepted only if it is a valid chain, or refused by name.
    let presets = BTreeMap::from([("mine".to_string(), text.to_string())]);
    if let Ok(p) = vpd::filters::presets::Presets::new(&presets) {
        assert_eq!(p.resolve("mine").unwrap(), Chain::from_str(&text).unwrap());
    }
}

#[test]
fn chain_and_preset_parser() {
    fuzz("chain", chains);
}

#[test]
fn config_file() {
    fuzz("config", |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(file) = toml::from_str::<vpd::config::FileConfig>(&text) {
            let _ = file.presets();
        }
    });
}

#[test]
fn http_routes() {
    use hyper::Method;
    fuzz("http", |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let (method, path) = text.split_once(' ').unwrap_or(("GET", &text));
        let Ok(method) = Method::from_bytes(method.as_bytes()) else { return };
        for dashboard in [true, false] {
            match vpd::http::Route::resolve(&method, path, dashboard) {
                vpd::http::Route::Job(id) | vpd::http::Route::Thumbnail(id) => {
                    assert!(dashboard && !id.is_empty() && !id.contains('/'), "{path:?} routed to job {id:?}");
                }
                vpd::http::Route::Asset(..) | vpd::http::Route::Events | vpd::http::Route::Jobs => {
                    assert!(dashboard, "{path:?} reached the dashboard on a metrics-only site")
                }
                _ => {}
            }
        }
        // The web application's routes: a job's id is one a store could hold, never a path.
        use vpd::http::web::ApiRoute;
        match ApiRoute::resolve(&method, path) {
            ApiRoute::Detail(id) | ApiRoute::Control(id, _) | ApiRoute::File(id, _) => {
                assert!(id.parse::<vpd::protocol::job::JobId>().is_ok(), "{path:?} routed to job {id:?}");
                assert!(!id.contains(['/', '.']), "{path:?} routed to job {id:?}");
            }
            route if route.changes() => assert_eq!(method, Method::POST, "{path:?}: a change by {method}"),
            _ => {}
        }
        // A Range header's part always lies inside the file.
        for len in [0u64, 1, 100, 1 << 40] {
            if let vpd::http::files::Ranged::Part(first, last) = vpd::http::files::range(Some(&text), len) {
                assert!(first <= last && last < len, "{text:?} on {len} bytes gave {first}-{last}");
            }
        }
    });
}

/// Writes the seed corpus of the binary targets with vpd's own encoders (run once, by hand:
/// `cargo test --test fuzz -- --ignored write_seed_corpus`); the text targets' seeds are
/// written by hand.
#[test]
#[ignore]
fn write_seed_corpus() {
    use opencv::core::{CV_8UC3, Mat, Scalar};
    use vpd::media::OutputOptions;
    use vpd::protocol::codec::encode_control;
    use vpd::protocol::job::{JobControl, JobSpec};
    use vpd::protocol::message::Token;
    use vpd::protocol::wire::{Encoder, ResultMeta, TaskMeta, TransportEncoding, encode_result, encode_task};
    let write = |target: &str, name: &str, bytes: &[u8]| {
        std::fs::create_dir_all(corpus_dir(target)).unwrap();
        std::fs::write(corpus_dir(target).join(name), bytes).unwrap();
    };
    let hello = ClientMessage::Hello { protocol: 5, client: "vpd/0.1.0".into(), token: Some(Token::new("s3cret")) };
    let submit = ClientMessage::Submit(Box::new(JobSpec {
        chain: "blur:ksize=5,edges".parse().unwrap(),
        output: OutputOptions::default(),
        container: "mp4".into(),
        transport: TransportEncoding::Auto,
        split: vpd::protocol::segment::Split::Auto,
        input_name: "in.mp4".into(),
        input_bytes: 12,
        client: String::new(),
        live: None,
    }));
    let mut session = encode_control(&hello).unwrap();
    session.extend(encode_control(&submit).unwrap());
    session.extend_from_slice(&[0, 0, 0, 13, 2]);
    session.extend_from_slice(b"twelve bytes");
    write("packet", "session", &session);
    for (name, m) in [
        ("list", ClientMessage::List { limit: 50 }),
        ("show", ClientMessage::Show { job: "j0123".parse().unwrap() }),
        ("cancel", ClientMessage::Control { job: "j0123".parse().unwrap(), control: JobControl::Cancel }),
        ("attach", ClientMessage::Attach { job: "j0123".parse().unwrap() }),
    ] {
        write("packet", name, &encode_control(&m).unwrap());
    }
    let frame = Mat::new_rows_cols_with_default(48, 64, CV_8UC3, Scalar::new(10.0, 200.0, 90.0, 0.0)).unwrap();
    let chain: Chain = "edges".parse().unwrap();
    for (name, encoding) in
        [("raw", TransportEncoding::Raw), ("lz4", TransportEncoding::Lz4), ("jpeg", "jpeg:80".parse().unwrap())]
    {
        let mut enc = Encoder::new(encoding);
        let meta = TaskMeta { job: "j0123", index: 7, chain: &chain, encoding };
        write("task", &format!("task-{name}"), &encode_task(&meta, &frame, Some(&frame), &mut enc).unwrap());
        let meta = ResultMeta { job: "j0123", index: 7, worker: "host:1", filter_us: 900, retries: 0 };
        write("task", &format!("result-{name}"), &encode_result(&meta, Ok(&frame), None, &mut enc).unwrap());
    }
}
