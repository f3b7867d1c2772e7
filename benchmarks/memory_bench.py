"""Peak RSS of the quickstart and a leak check: RSS sampled every 0.5 s from outside the training process.

    python benchmarks/memory_bench.py [--max_steps 600]

"Flat after warm-up" is judged on the training phase: the RSS slope over its second half, in MB per minute.
"""

import argparse
import subprocess
import sys
import tempfile
import time


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max_steps", type=int, default=600)
    a = p.parse_args()
    out = tempfile.mkdtemp(prefix="tinyllm_mem_")
    cmd = [sys.executable, "recipes/pretrain.py", "--config", "recipes/configs/quickstart.yaml", "--output_dir", out,
           "--overwrite_output_dir", "true", "--max_steps", str(a.max_steps), "--report_to", "none"]
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    while proc.poll() is None:
        r = rss_mb(proc.pid)
        if r:
            samples.append((time.time() - start, r))
        time.sleep(0.5)
    err = proc.stderr.read()
    if proc.returncode:
        print(err[-3000:])
        return proc.returncode
    peak = max(r for _, r in samples)
    # the training phase: from the first time RSS is within 90% of its final plateau to the end
    n = len(samples)
    train = samples[n // 3: n - 5] if n > 20 else samples
    half = train[len(train) // 2:]
    slope = (half[-1][1] - half[0][1]) / max((half[-1][0] - half[0][0]) / 60, 1e-9) if len(half) > 2 else 0.0
    print("| metric | value |\n|---|---|")
    print(f"| peak RSS (quickstart, {a.max_steps} steps) | {peak:,.0f} MB |")
    print(f"| RSS at 1/3 and at the end of the run | {train[0][1]:,.0f} MB / {train[-1][1]:,.0f} MB |")
    print(f"| RSS slope, second half of training | {slope:+.1f} MB/min |")
    print(f"| wall time | {time.time() - start:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
