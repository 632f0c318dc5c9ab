#!/usr/bin/env python3
"""Kills a vpd server with SIGKILL at random points of one job, again and again, restarting it
on the same state directory each time, and reports what the crashes cost:

- frames redone per kill: frames the killed server had written past its last committed
  segment (they are done again after the restart);
- restart to first new frame: from spawning the restarted server to its first frame processed
  (its /metrics counter moving), which includes process start, opening the store, reopening
  the job and seeking to its first uncommitted segment.

    scripts/bench-crash-resume.py [KILLS] [SEGMENT_SECONDS]

It uses target/release/vpd (or $VPD), a 720p testsrc2 clip made with ffmpeg, and the
`edges` filter in-process.
"""

import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

VPD = os.environ.get("VPD", "target/release/vpd")
KILLS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
SEGMENT = sys.argv[2] if len(sys.argv) > 2 else "2"
FPS = 25
SECONDS = 120


def metric(url, name):
    text = urllib.request.urlopen(url + "metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[-1]))
    raise RuntimeError(f"no {name}")


def start_server(state, port):
    args = [VPD, "server", "--listen", f"127.0.0.1:{port}", "--state-dir", state,
            "--segment-seconds", SEGMENT, "--metrics", "127.0.0.1:0", "--work-dir", state + "/work"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    tcp = metrics = None
    while tcp is None or metrics is None:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the server exited")
        if line.startswith("listening tcp "):
            tcp = line.split()[-1]
        if line.startswith("listening metrics "):
            metrics = line.split()[-1]
    return proc, tcp.rsplit(":", 1)[1], metrics


def committed_frames(state, job):
    """Frames in the segments the store records as committed (read once the server is dead)."""
    db = sqlite3.connect(f"file:{state}/vpd.db?mode=ro", uri=True)
    try:
        return db.execute("SELECT coalesce(sum(frames), 0) FROM segments WHERE job = ?", (job,)).fetchone()[0]
    finally:
        db.close()


def main():
    random.seed(int(os.environ.get("SEED", "7")))
    work = tempfile.mkdtemp(prefix="vpd-crash-")
    clip = os.path.join(work, "in.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={FPS}",
                    "-t", str(SECONDS), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", clip],
                   check=True)
    total = SECONDS * FPS
    state = os.path.join(work, "state")
    server, port, metrics = start_server(state, 0)
    out = os.path.join(work, "out.mp4")
    subprocess.run([VPD, "client", clip, "--server", f"127.0.0.1:{port}", "-f", "edges", "-o", out,
                    "--detach", "--quiet"], check=True, capture_output=True)
    jobs = json.loads(subprocess.run([VPD, "jobs", "--server", f"127.0.0.1:{port}", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    job = jobs[0]["id"]
    resumed_at = 0
    redone, restarts = [], []
    for kill in range(KILLS):
        # A random point: 0.5 to 4 s of processing into this server's run.
        time.sleep(random.uniform(0.5, 4.0))
        processed = metric(metrics, "vpd_frames_processed_total")
        server.send_signal(signal.SIGKILL)
        server.wait()
        written = resumed_at + processed
        if written >= total:
            print("the job ended before the kill; use a longer clip")
            break
        committed = committed_frames(state, job)
        began = time.monotonic()
        server, _, metrics = start_server(state, port)
        while metric(metrics, "vpd_frames_processed_total") == 0:
            time.sleep(0.005)
        restarts.append(time.monotonic() - began)
        redone.append(written - committed)
        print(f"kill {kill + 1}: written {written}, committed {committed}, redone {written - committed}, "
              f"restart to first new frame {restarts[-1] * 1000:.0f} ms")
        resumed_at = committed
    server.send_signal(signal.SIGTERM)
    server.wait()
    per_segment = round(FPS * float(SEGMENT))
    print(f"segment: {per_segment} frames; kills: {len(redone)}")
    print(f"frames redone: largest {max(redone)}, median {statistics.median(redone)}")
    print(f"restart to first new frame: median {statistics.median(restarts) * 1000:.0f} ms, "
          f"largest {max(restarts) * 1000:.0f} ms")
    subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
