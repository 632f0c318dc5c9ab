#!/usr/bin/env python3
"""Load under faults (not part of `make test`): 16 clients submit 64 jobs in all to one server
with two RabbitMQ workers, while a worker is killed (SIGKILL) and started again every 10 s and
the server's broker connection is cut once. Every job must complete, and every output must equal
`vpd run`'s frame for frame (FFV1, compared by FFmpeg's per-frame MD5). Prints throughput, the
server's peak RSS and the task queue's deepest point.

    scripts/load.py [--clients 16] [--jobs 64] [--frames 120]

Needs a local RabbitMQ with rabbitmqctl (VPD_TEST_AMQP_URL, default guest@127.0.0.1)."""

import argparse, json, os, random, re, signal, subprocess, sys, tempfile, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("--clients", type=int, default=16)
ap.add_argument("--jobs", type=int, default=64)
ap.add_argument("--frames", type=int, default=120)
ap.add_argument("--chain", default="blur:ksize=21,edges")
args = ap.parse_args()

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/vpd/target"))
env = dict(os.environ, CARGO_TARGET_DIR=target)
subprocess.run(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "vpd", "--example", "queue_depth"],
               cwd=root, env=env, check=True)
VPD = f"{target}/release/vpd"
DEPTH = f"{target}/release/examples/queue_depth"
URL = os.environ.get("VPD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
ns = f"vpd-load-{os.getpid()}"
work = tempfile.mkdtemp(prefix="vpd-load-")
procs = []

def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    procs.append(p)
    return p

def framemd5(path):
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-map", "0:v", "-f", "framemd5", "-"],
                         capture_output=True, text=True, check=True).stdout
    return [l.split(",")[-1].strip() for l in out.splitlines() if l and not l.startswith("#")]

try:
    # Four clips, each the input of a quarter of the jobs, and vpd run's frames for each.
    sources = ["testsrc2", "mandelbrot", "life=mold=10:ratio=0.5:size=640x360", "smptehdbars"]
    clips, want = [], []
    for i, src in enumerate(sources):
        graph = src if "size=" in src else f"{src}=size=640x360:rate=25"
        clip = f"{work}/in{i}.mkv"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", graph, "-frames:v", str(args.frames),
                        "-pix_fmt", "yuv420p", "-c:v", "ffv1", clip], check=True)
        ref = f"{work}/ref{i}.mkv"
        subprocess.run([VPD, "run", clip, "-f", args.chain, "-o", ref, "--codec", "ffv1", "-q"], check=True)
        clips.append(clip)
        want.append(framemd5(ref))

    port = random.randint(20000, 40000)
    server = spawn([VPD, "server", "--listen", f"127.0.0.1:{port}", "--amqp", URL, "--namespace", ns,
                    "--work-dir", f"{work}/w", "--state-dir", f"{work}/s", "--max-jobs", "4",
                    "--redispatch-after", "5"], stdout=subprocess.PIPE, stderr=open(f"{work}/server.err", "w"))
    assert server.stdout.readline().startswith(b"listening tcp")
    workers = [None, None]
    def start_worker(i):
        workers[i] = spawn([VPD, "worker", "--amqp", URL, "--namespace", ns, "--threads", "2", "--name", f"w{i}"],
                           stderr=subprocess.DEVNULL)
    start_worker(0); start_worker(1)
    sampler = spawn([DEPTH, URL, ns], stdout=open(f"{work}/depth.csv", "w"))

    done = threading.Event()
    faults = {"kills": 0, "cut": False}
    def chaos():
        i = 0
        cut_at = time.monotonic() + 15
        next_kill = time.monotonic() + 10
        while not done.wait(0.2):
            if not faults["cut"] and time.monotonic() >= cut_at:
                conns = subprocess.run(["rabbitmqctl", "list_connections", "-q", "pid", "client_properties"],
                                       capture_output=True, text=True).stdout
                for line in conns.splitlines():
                    if "vpd-server " in line and f":{server.pid}\"" in line:
                        subprocess.run(["rabbitmqctl", "close_connection", line.split()[0], "load test"],
                                       capture_output=True)
                        faults["cut"] = True
            if time.monotonic() >= next_kill:
                workers[i % 2].send_signal(signal.SIGKILL)
                workers[i % 2].wait()
                start_worker(i % 2)
                faults["kills"] += 1
                i += 1
                next_kill += 10
    threading.Thread(target=chaos, daemon=True).start()

    results, failures = [], []
    lock = threading.Lock()
    def client(c):
        for k in range(c, args.jobs, args.clients):
            n = k % len(clips)
            out = f"{work}/out{k}.mkv"
            r = subprocess.run([VPD, "client", clips[n], "--server", f"127.0.0.1:{port}", "-f", args.chain,
                                "-o", out, "--codec", "ffv1", "--json"], capture_output=True, text=True)
            with lock:
                if r.returncode != 0:
                    failures.append((k, r.stderr.strip()))
                elif framemd5(out) != want[n]:
                    failures.append((k, "frames differ from vpd run's"))
                else:
                    results.append(json.loads(r.stdout))
    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads: t.start()
    for t in threads: t.join()
    wall = time.monotonic() - start
    done.set()
    status = open(f"/proc/{server.pid}/status").read()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) // 1024
    sampler.terminate(); sampler.wait()
    depths = [int(l.split(",")[1]) for l in open(f"{work}/depth.csv").read().split()[1:]]
    frames = sum(r["frames"] for r in results)
    print(f"jobs: {len(results)} of {args.jobs} complete and equal to vpd run's frames; failures: {len(failures)}")
    for k, why in failures:
        print(f"  job {k}: {why}")
    print(f"faults: {faults['kills']} worker kills, broker connection cut: {faults['cut']}")
    print(f"throughput: {frames} frames in {wall:.1f} s = {frames / wall:.1f} frames/s ({len(results) / wall * 60:.1f} jobs/min)")
    print(f"server peak RSS: {peak} MB; task queue depth: max {max(depths)}, mean {sum(depths) / len(depths):.1f}")
    sys.exit(0 if not failures and len(results) == args.jobs and faults["cut"] else 1)
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
    subprocess.run(["rm", "-rf", work])
    subprocess.run([DEPTH, URL, ns, "delete"], capture_output=True)
