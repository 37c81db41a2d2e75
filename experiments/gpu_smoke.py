"""What a lent GPU runs first (``make gpu-smoke``): in a few minutes, three checks on the device.

1. **Exactness on the device**: for the CIFAR and ImageNet structured models (A and B), the
   decomposed model equals the projected one in float64 on the device (relative error <= 1e-10)
   and within float32 rounding in float32 (<= 1e-4);
2. **one CIFAR-10 epoch**: ``python -m src.train +exp=cifar10/struct_resnet20_a trainer.max_epochs=1``
   on the device (the whole pipeline: train, project, recalibrate, decompose, summary.json);
3. **speed pairs**: dense vs decomposed latency of ResNet-20/56 (CIFAR) and ResNet-18/50 (ImageNet)
   on the device's backends (``cuda``, ``cuda_bf16`` on a GPU; ``eager_cl`` on CPU), interleaved.

``--device cpu`` runs the same script on the CPU (tests; ``--quick`` shrinks every step). The
report, ``<out>/gpu_smoke.md`` and ``gpu_smoke.json``, says what passed, with the figures; the
exit status is non-zero when a check fails.

    python -m experiments.gpu_smoke --data data/cifar10 [--device cuda|cpu] [--out gpu_smoke] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from src.models import create_model, get_entry
from src.structured import decompose, project

FULL = dict(exact_models=["resnet20", "resnet56", "cifar_mobilenet_v2", "resnet18", "resnet50", "mobilenet_v2"],
            exact_batch=4, speed=[("resnet20", 256), ("resnet56", 256), ("resnet18", 64), ("resnet50", 64)],
            train_subset=None, reps=20, min_time=0.5)
QUICK = dict(exact_models=["resnet20"], exact_batch=2, speed=[("resnet20", 8)],
             train_subset=512, reps=3, min_time=0.05)
TOL64, TOL32 = 1e-10, 1e-4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_exactness(models: list[str], device: torch.device, batch: int) -> list[dict]:
    rows = []
    for name in models:
        for variant in ("a", "b"):
            torch.manual_seed(0)
            model = create_model(f"struct_{name}_{variant}").eval()
            c, h, w = get_entry(name).input_size
            if h > 64:  # ImageNet models: a smaller image keeps the float64 check fast; exactness does not depend on it
                h = w = 64
            x = torch.randn(batch, c, h, w)
            row = {"model": f"struct_{name}_{variant}", "input": [batch, c, h, w]}
            for dtype, tol in ((torch.float64, TOL64), (torch.float32, TOL32)):
                ref = project(copy.deepcopy(model).to(device, dtype))  # projected in the dtype checked
                dec = decompose(ref).eval()
                with torch.no_grad():
                    err = _rel(dec(x.to(device, dtype)), ref(x.to(device, dtype)))
                key = "float64" if dtype == torch.float64 else "float32"
                row[f"rel_err_{key}"] = err
                row[f"ok_{key}"] = err <= tol
            rows.append(row)
            print(f"exactness {row['model']}: float64 {row['rel_err_float64']:.1e}, float32 {row['rel_err_float32']:.1e}",
                  flush=True)
    return rows


def one_epoch(data: str, device: str, out: Path, train_subset: int | None) -> dict:
    run_dir = out / "run"
    accel = "gpu" if device.startswith("cuda") else "cpu"
    cmd = [sys.executable, "-m", "src.train", "+exp=cifar10/struct_resnet20_a", "trainer.max_epochs=1",
           f"trainer.accelerator={accel}", "trainer.progress_bar=none", f"data.root={data}", "profile=gpu_smoke",
           f"hydra.run.dir={run_dir}", "resume=false"]
    if accel == "gpu":
        cmd.append("trainer.precision=bf16-mixed")
    if train_subset:
        cmd += [f"data.train_subset={train_subset}", "data.test_subset=128", "data.batch_size=64",
                "structure.bn_recalib_batches=2"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    result = {"command": " ".join(cmd[2:]), "exit": proc.returncode, "wall_s": round(time.time() - t0, 1)}
    if proc.returncode:
        result["error"] = (proc.stderr.strip().splitlines() or ["?"])[-3:]
        return result
    s = json.loads((run_dir / "summary.json").read_text())
    result.update({k: s[k] for k in ("device", "test_acc_dense", "test_acc_decomposed", "train_images_per_s",
                                     "wall_time_s")})
    return result


def speed_pairs(pairs: list[tuple[str, int]], device: torch.device, reps: int, min_time: float) -> list[dict]:
    from src.bench.backends import make_backend
    from src.bench.measure import measure_model

    names = ["cuda", "cuda_bf16"] if device.type == "cuda" else ["eager_cl"]
    backends = [make_backend(n, threads=torch.get_num_threads()) for n in names]
    rows = []
    for model, batch in pairs:
        got, skipped = measure_model(model, batch, ["a", "b"], backends, reps=reps, min_time=min_time, plan=False)
        for r in got:
            rows.append({"model": model, "variant": r.variant, "batch": batch, "backend": r.backend,
                         "dense_ms": round(1e3 * r.dense_s, 3), "decomposed_ms": round(1e3 * r.dec_s, 3),
                         "ratio": round(r.dec_s / r.dense_s, 3), "mac_ratio": round(r.mac_ratio, 3)})
            print(f"speed {model} {r.variant} batch {batch} {r.backend}: {rows[-1]['ratio']:.2f}x dense", flush=True)
        for s in skipped:
            rows.append({"model": model, "batch": batch, "backend": s.backend, "skipped": s.reason})
    return rows


def report(res: dict) -> str:
    lines = [f"# GPU smoke ({res['device']})", "", f"torch {res['torch']}; {res['device_name']}; "
             f"total {res['total_s'] / 60:.1f} min ("
             + ", ".join(f"{k} {v:.0f} s" for k, v in res["step_s"].items()) + ").", "", "## Exactness (decomposed vs projected)", "",
             "| model | input | float64 rel. err | float32 rel. err | ok |", "|---|---|---:|---:|---|"]
    for r in res["exactness"]:
        ok = r["ok_float64"] and r["ok_float32"]
        lines.append(f"| {r['model']} | {r['input']} | {r['rel_err_float64']:.1e} | {r['rel_err_float32']:.1e} | "
                     f"{'yes' if ok else '**NO**'} |")
    e = res["epoch"]
    lines += ["", "## One CIFAR-10 epoch", "", f"`{e['command']}`: exit {e['exit']}, {e['wall_s']} s"]
    if not e["exit"]:
        lines.append(f"- device {e['device']}; acc trained {e['test_acc_dense']}, decomposed {e['test_acc_decomposed']}; "
                     f"{e['train_images_per_s']} img/s")
    else:
        lines.append("- error: " + " / ".join(e["error"]))
    lines += ["", "## Speed pairs (decomposed / dense latency)", "",
              "| model | variant | batch | backend | dense ms | decomposed ms | ratio | MAC ratio |",
              "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in res["speed"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | - | {r['batch']} | {r['backend']} | skipped: {r['skipped']} | | | |")
        else:
            lines.append(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['backend']} | {r['dense_ms']} | "
                         f"{r['decomposed_ms']} | {r['ratio']:.2f} | {r['mac_ratio']:.2f} |")
    lines += ["", f"Result: {'PASS' if res['passed'] else 'FAIL'}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.gpu_smoke", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("CIFAR_ROOT", "data/cifar10"), help="CIFAR-10 root")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda (default when a GPU is present), cuda:N or cpu")
    ap.add_argument("--out", type=Path, default=Path("gpu_smoke"), help="report folder (default: gpu_smoke/)")
    ap.add_argument("--quick", action="store_true", help="every step shrunk (tests on CPU): seconds, not minutes")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch sees no GPU here (torch {torch.__version__}); use --device cpu")
    cfg = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = {"device": str(device), "torch": torch.__version__,
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}
    steps = res["step_s"] = {}
    res["exactness"] = check_exactness(cfg["exact_models"], device, cfg["exact_batch"])
    steps["exactness"] = round(time.time() - t0, 1)
    res["epoch"] = one_epoch(args.data, args.device, args.out, cfg["train_subset"])
    steps["epoch"] = round(time.time() - t0 - sum(steps.values()), 1)
    print(f"one epoch: exit {res['epoch']['exit']} in {res['epoch']['wall_s']} s", flush=True)
    res["speed"] = speed_pairs(cfg["speed"], device, cfg["reps"], cfg["min_time"])
    steps["speed"] = round(time.time() - t0 - sum(steps.values()), 1)
    res["total_s"] = round(time.time() - t0, 1)
    res["passed"] = all(r["ok_float64"] and r["ok_float32"] for r in res["exactness"]) and res["epoch"]["exit"] == 0
    (args.out / "gpu_smoke.json").write_text(json.dumps(res, indent=2) + "\n")
    text = report(res)
    (args.out / "gpu_smoke.md").write_text(text)
    print(text)
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
