"""Where a CIFAR ResNet training epoch's time goes, and which precision / compile mode is fastest
on this CPU: ``python -m experiments.throughput [--models resnet20,struct_resnet20_a] [--steps 40]``.

Measures, on the real CIFAR-10 training arrays and the medium recipe's step (SGD 0.9, batch 128,
channels_last, task loss + lambda * structural loss for struct_* models):

- data: gathering, augmenting and normalising one training batch (src/data/cifar.py's loader);
- step: forward + backward + optimizer step, per mode: ``fp32``; ``bf16`` (CPU autocast to
  bfloat16, as Lightning's ``bf16-mixed``; the structural loss stays fp32, outside autocast);
  ``compile`` (``torch.compile`` of the model); ``compile+bf16``;
- eval: one pass over the 5,000-image primary set and over a 1,000-image subset (batch 512).

Each (model, mode) runs in a fresh process so that one mode's compiled graphs or thread pools do
not leak into another's timing. ``--threads 1 --pair`` runs two identical processes side by side
(how the medium profile runs: two runs of one thread each on two cores) and reports each one's
rate; ``--threads 2`` runs one process alone. Printed: a markdown table of training images per
second (median over the timed steps after ``--warmup`` untimed ones) and the ratio to fp32.
Time it on a quiet machine: nothing else may use the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("fp32", "bf16", "compile", "compile+bf16")


def _worker(model_name: str, mode: str, steps: int, warmup: int, data_root: str) -> dict:
    import torch
    import torch.nn.functional as F

    from src.data.cifar import CifarLoader, load_cifar10
    from src.models import create_model
    from src.structured import structural_loss, structured_layers

    torch.manual_seed(0)
    a = load_cifar10(data_root, download="false")
    loader = CifarLoader(a.train_x[:45_000], a.train_y[:45_000], 128, train=True, seed=0, channels_last=True)
    model = create_model(model_name, num_classes=10).to(memory_format=torch.channels_last)
    has_structure = any(True for _ in structured_layers(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    fwd = torch.compile(model) if mode.startswith("compile") else model
    bf16 = mode.endswith("bf16")

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fwd(x)
            loss = F.cross_entropy(out.float(), y)
        if has_structure:
            loss = loss + 0.1 * structural_loss(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    it = iter(loader)
    data_t, step_t = [], []
    model.train()
    t_first = None
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = next(it)
        t1 = time.perf_counter()
        loss = step(x, y)
        t2 = time.perf_counter()
        if i == 0:
            t_first = t2 - t1
        if i >= warmup:
            data_t.append(t1 - t0)
            step_t.append(t2 - t1)
    if not torch.isfinite(torch.tensor(loss)):
        raise FloatingPointError(f"{model_name} {mode}: non-finite loss")
    # evaluation: the primary set (train[45000:50000]) and a 1,000-image subset, in the mode's precision
    model.eval()
    ev = {}
    for n in (5000, 1000):
        el = CifarLoader(a.train_x[45_000:45_000 + n], a.train_y[45_000:45_000 + n], 512, train=False, channels_last=True)
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for x, y in el:
                fwd(x)
        ev[n] = time.perf_counter() - t0
    d, s = statistics.median(data_t), statistics.median(step_t)
    return dict(model=model_name, mode=mode, threads=torch.get_num_threads(), data_s=d, step_s=s,
                first_step_s=t_first, img_per_s=128 / (d + s), eval5000_s=ev[5000], eval1000_s=ev[1000], last_loss=loss)


def _spawn(model: str, mode: str, threads: int, args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "experiments.throughput", "--worker", model, mode, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--data", args.data]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(p: subprocess.Popen, what: str) -> dict | None:
    out, err = p.communicate()
    if p.returncode:
        tail = (err or out).strip().splitlines()[-1:] or ["(no output)"]
        print(f"  {what}: failed ({tail[0][:200]})", file=sys.stderr)
        return None
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.throughput", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet20,struct_resnet20_a")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (1 runs as a side-by-side pair)")
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per measurement")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps first (compilation happens there)")
    ap.add_argument("--data", default=os.environ.get("CIFAR_ROOT", "data/cifar10"))
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(*args.worker, args.steps, args.warmup, args.data)))
        return
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"--modes {','.join(bad)}: not a mode (allowed: {', '.join(MODES)})")
    rows = []
    for model in args.models.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            for mode in modes:
                n = 2 if threads == 1 else 1
                procs = [_spawn(model, mode, threads, args) for _ in range(n)]
                res = [_result(p, f"{model} {mode} {threads}t") for p in procs]
                if any(r is None for r in res):
                    rows.append(dict(model=model, mode=mode, threads=threads, failed=True))
                    continue
                rows.append(dict(model=model, mode=mode, threads=threads, procs=n,
                                 img_per_s=statistics.mean(r["img_per_s"] for r in res),
                                 total=sum(r["img_per_s"] for r in res),
                                 data_ms=1e3 * statistics.mean(r["data_s"] for r in res),
                                 step_ms=1e3 * statistics.mean(r["step_s"] for r in res),
                                 first_s=max(r["first_step_s"] for r in res),
                                 eval5000_s=statistics.mean(r["eval5000_s"] for r in res),
                                 eval1000_s=statistics.mean(r["eval1000_s"] for r in res)))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    import torch

    print(f"\ntorch {torch.__version__}, {os.cpu_count()} CPUs; median of {args.steps} steps after {args.warmup} warm-up; "
          f"batch 128, channels_last; 'machine img/s' = all processes together\n")
    print("| model | threads x processes | mode | img/s per run | machine img/s | vs fp32 | data ms/batch | step ms/batch "
          "| first step s | eval 5,000 s | eval 1,000 s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        where = f"{r['threads']} x {r.get('procs', 2 if r['threads'] == 1 else 1)}"
        if r.get("failed"):
            print(f"| {r['model']} | {where} | {r['mode']} | failed | | | | | | | |")
            continue
        base = next((b for b in rows if b["model"] == r["model"] and b["threads"] == r["threads"]
                     and b["mode"] == "fp32" and not b.get("failed")), None)
        ratio = f"{r['img_per_s'] / base['img_per_s']:.2f}" if base else ""
        print(f"| {r['model']} | {where} | {r['mode']} | {r['img_per_s']:.0f} | {r['total']:.0f} | {ratio} | "
              f"{r['data_ms']:.1f} | {r['step_ms']:.0f} | {r['first_s']:.1f} | {r['eval5000_s']:.1f} | {r['eval1000_s']:.1f} |")


if __name__ == "__main__":
    main()
