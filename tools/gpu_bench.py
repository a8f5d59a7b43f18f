"""The one GPU run of issue 6: edgecnn's CUDA path against PyTorch eager on the same GPU.

Runs on the lent GPU machine (python 3.12, numpy, onnx, click, Pillow, torch + torchvision, and
onnxruntime-gpu under /root/site after ../shared/tools/ort-gpu-parts.sh; no TensorFlow). It takes
the ONNX files tools/gpu_prepare.py made here (carried as runs/gpu_models) and, within
``--budget`` seconds, most important first:

1. checks the environment: onnxruntime-gpu is the one imported, CUDA is listed, the GPU's name;
2. node placement of every model on the CUDA provider ("nodes on CPU: N of M");
3. PyTorch eager torchvision mobilenet_v2 (10 classes): fp32, and fp16 channels_last;
4. onnxruntime CUDA EP through edgecnn's Classifier: each model x {plain ``run`` with host
   copies, IO binding with device-resident buffers, CUDA graph} x batch 1, 32, 256;
5. the levers on the fp16/fp32 NHWC exports: cuDNN algorithm search (HEURISTIC, DEFAULT vs the
   EXHAUSTIVE default) and ``prefer_nhwc``, with IO binding and with CUDA graphs;
6. ``Classifier.run`` end to end (host in, host out) with CUDA graphs;
7. ``pytest -m gpu tests/runtime``.

Every onnxruntime session must run on CUDAExecutionProvider (edgecnn raises on a fallback; the
provider list is recorded per row). Results go to $OUT (or --out) as gpu_bench.json (rewritten
after every point, so a timeout keeps what was measured), gpu_bench.md and pytest_gpu.txt.

    # GPU machine, after the four ort-gpu-parts calls (see docs/gpu.md):
    export PYTHONPATH=/root/site:$PWD && python3 tools/gpu_bench.py --models runs/gpu_models --out $OUT
    # here, on the CPU, to prove the script (tiny runs, no CUDA graphs, torch only if installed):
    .venv/bin/python tools/gpu_bench.py --cpu-dry-run --out /tmp/gpu_dry
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecnn.runtime.benchmark import gpu_fingerprint, latency_stats, time_callable  # noqa: E402

MODEL = "mobilenet_v2_224"
PRIMARY = ["fp16.nhwc", "fp32.nhwc"]  # the default export layout, both precisions: the full grid first
OTHERS = ["fp16.nchw", "fp32.nchw", "fp16f32io.nhwc"]
GOAL_RATIO, GOAL_P50_MS = 1.5, 0.5


class Run:
    """Collects rows and notes, rewrites the JSON after each point, and keeps the time budget."""

    def __init__(self, out: Path, budget_s: float, dry: bool, timing: dict[str, Any]) -> None:
        self.out, self.dry, self.timing = out, dry, timing
        self.deadline = time.monotonic() + budget_s
        self.rows: list[dict[str, Any]] = []
        self.data: dict[str, Any] = {"schema": "edgecnn.gpu_bench/1", "dry_run": dry, "rows": self.rows,
                                     "placement": {}, "skipped": [], "errors": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        (self.out / "gpu_bench.json").write_text(json.dumps(self.data, indent=2, default=str))

    def measure(self, fn: Callable[[], Any], batch: int, **row: Any) -> dict[str, Any]:
        times = time_callable(fn, **self.timing)
        stats = latency_stats(times, batch)
        kept = ("runs", "p50_ms", "p90_ms", "mean_ms", "throughput_ips")
        rec = {**row, "batch": batch, **{k: stats[k] for k in kept}}
        self.rows.append(rec)
        self.save()
        click.echo(f"  {row.get('runner')}/{row.get('model', '')}/{row.get('mode', '')} "
                   f"{row.get('config', '')} b{batch}: p50 {stats['p50_ms']:.3f} ms, "
                   f"{stats['throughput_ips']:,.0f} img/s")
        return rec

    def guard(self, what: str, fn: Callable[[], Any], *, need_s: float = 5.0) -> None:
        """Run one case unless the budget is spent; record (not raise) its failure."""
        if self.left() < need_s:
            self.data["skipped"].append(f"{what}: out of time budget")
            click.echo(f"skip {what}: out of time budget")
            return
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - one failing case must not cost the others: recorded, not raised
            self.data["errors"].append({"case": what, "error": f"{type(err).__name__}: {err}"[:2000],
                                        "traceback": traceback.format_exc()[-3000:]})
            click.echo(f"ERROR {what}: {type(err).__name__}: {str(err)[:300]}")
        self.save()


# ------------------------------------------------------------------------------------ environment

def environment(provider: str) -> dict[str, Any]:
    import onnxruntime as ort

    from edgecnn.runtime.session import preload_cuda_libraries

    env = {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": ort.__version__,
           "onnxruntime_file": ort.__file__, "providers_available": ort.get_available_providers(),
           "preload_dlls": preload_cuda_libraries(), "gpu": gpu_fingerprint(), "host": platform.node(),
           "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        import torch
        import torchvision

        env.update(torch=torch.__version__, torchvision=torchvision.__version__,
                   torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   torch_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except ImportError as err:
        env["torch"] = f"missing ({err})"
    if provider == "cuda" and "CUDAExecutionProvider" not in env["providers_available"]:
        raise SystemExit(f"onnxruntime {ort.__version__} from {ort.__file__} has no CUDA provider "
                         f"({env['providers_available']}): run the four ort-gpu-parts calls and "
                         "`export PYTHONPATH=/root/site:$PWD` first (docs/gpu.md).")
    return env


# ------------------------------------------------------------------------------------ onnxruntime

def _input(clf: Any, batch: int) -> np.ndarray:
    shape = clf.card.input_shape(batch)
    return np.random.default_rng(batch).standard_normal(shape).astype(clf.input_dtype)


def _classifier(path: Path, provider: str, **cuda: Any) -> Any:
    from edgecnn.runtime import Classifier
    from edgecnn.runtime.session import CudaOptions

    clf = Classifier(path, provider=provider, cuda=CudaOptions(**cuda) if cuda else None, io_binding=True)
    want = "CUDAExecutionProvider" if provider == "cuda" else "CPUExecutionProvider"
    if clf.providers[0] != want:  # create_session raises first; this is the belt to its braces
        raise RuntimeError(f"{path.name} runs on {clf.providers}, not {want}")
    return clf


def ort_case(run: Run, path: Path, provider: str, batches: tuple[int, ...], *, modes: tuple[str, ...],
             config: str = "exhaustive", **cuda: Any) -> None:
    """plain + iobinding share one session; each CUDA-graph batch gets its own (one shape per graph)."""
    name = path.name.removeprefix(f"{MODEL}.").removesuffix(".onnx")
    precision, layout = name.split(".")
    base = {"runner": "onnxruntime", "model": name, "precision": precision, "layout": layout, "config": config}
    if {"plain", "iobinding"} & set(modes):
        clf = _classifier(path, provider, **cuda)
        for batch in batches:
            x = _input(clf, batch)
            sess, feed, out = clf.session, {clf.input_name: x}, [clf.output_name]
            if "plain" in modes:
                run.measure(lambda sess=sess, out=out, feed=feed: sess.run(out, feed), batch, mode="plain",
                            providers=clf.providers, **base)
            if "iobinding" in modes:
                _, fn = clf.timed_call(x)
                run.measure(fn, batch, mode="iobinding", providers=clf.providers, **base)
        del clf
    if "cudagraph" in modes:
        if provider != "cuda":
            run.data["skipped"].append(f"{name} {config} cudagraph: needs CUDA (dry run)")
            return
        for batch in batches:
            clf = _classifier(path, provider, cuda_graph=True, **cuda)
            _, fn = clf.timed_call(_input(clf, batch))
            run.measure(fn, batch, mode="cudagraph", providers=clf.providers, **base)
            del clf


def classifier_end_to_end(run: Run, path: Path, provider: str, batches: tuple[int, ...]) -> None:
    """``Classifier.run`` on a host array: update_inplace (H2D), replay, output copy (D2H)."""
    graph = provider == "cuda"
    for batch in batches:
        clf = _classifier(path, provider, **({"cuda_graph": True} if graph else {}))
        x = _input(clf, batch).astype(np.float32)  # what preprocess() gives; run() casts to the model dtype
        name = path.name.removeprefix(f"{MODEL}.").removesuffix(".onnx")
        run.measure(lambda clf=clf, x=x: clf.run(x), batch, runner="edgecnn.Classifier.run", model=name,
                    mode="host-in-out",
                    config="cudagraph" if graph else "iobinding", providers=clf.providers,
                    precision=name.split(".")[0], layout=name.split(".")[1])


def placements(run: Run, paths: list[Path], provider: str) -> None:
    from edgecnn.runtime.session import node_placement

    for path in paths:
        p = node_placement(path, provider=provider)
        run.data["placement"][path.name] = {**p.to_dict(), "summary": p.summary(), "provider": provider}
        click.echo(f"{path.name}: {p.summary()}")


# ---------------------------------------------------------------------------------------- torch

def torch_case(run: Run, batches: tuple[int, ...], dry: bool) -> None:
    try:
        import torch
        import torchvision
    except ImportError as err:
        run.data["skipped"].append(f"torch: not installed ({err})")
        click.echo("skip torch: not installed")
        return
    device = "cuda" if not dry else "cpu"
    if not dry and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    torch.backends.cudnn.benchmark = True  # the fair counterpart of cuDNN EXHAUSTIVE search
    net = torchvision.models.mobilenet_v2(num_classes=10).eval().to(device)
    variants = [("fp32", torch.float32, torch.contiguous_format)]
    if not dry:
        variants.append(("fp16", torch.float16, torch.channels_last))
    for precision, dtype, fmt in variants:
        model = net.to(dtype=dtype, memory_format=fmt)
        for batch in batches:
            x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype).contiguous(memory_format=fmt)

            def fn(model=model, x=x) -> None:
                with torch.inference_mode():
                    model(x)
                if device == "cuda":
                    torch.cuda.synchronize()

            layout = "channels_last" if fmt is torch.channels_last else "nchw"
            run.measure(fn, batch, runner="torch.eager", model=f"torchvision.mobilenet_v2.{precision}.{layout}",
                        precision=precision, layout=layout, mode="eager", config="cudnn.benchmark",
                        providers=[device])


# --------------------------------------------------------------------------------------- pytest

def run_pytest(out: Path, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-rs", "-p", "no:cacheprovider", "tests/runtime"]
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        text, rc = res.stdout + res.stderr, res.returncode
    except subprocess.TimeoutExpired as err:
        text, rc = f"{err.stdout or ''}\n... pytest timed out after {timeout_s:.0f} s", 124
    (out / "pytest_gpu.txt").write_text(f"$ {' '.join(cmd)}\n{text}\nexit code {rc}\n")
    tail = [line for line in text.splitlines() if line.strip()][-1:] or [""]
    return {"exit_code": rc, "summary": tail[0]}


# ------------------------------------------------------------------------------------- markdown

def markdown(data: dict[str, Any]) -> str:
    env, rows = data["env"], data["rows"]
    gpu = env["gpu"][0]["name"] if env.get("gpu") else "no GPU (CPU dry run)" if data["dry_run"] else "?"
    lines = [f"# edgecnn GPU benchmark: MobileNetV2 224x224, 10 classes - {gpu}", "",
             f"onnxruntime {env['onnxruntime']} ({env['onnxruntime_file']}), providers {env['providers_available']}; "
             f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}); {env['date']}.",
             "" if not data["dry_run"]
             else "\n**CPU dry run: these numbers say the script works, nothing about a GPU.**", "",
             f"## Node placement ({'CPU provider: dry run' if data['dry_run'] else 'CUDA provider'})", ""]
    lines += [f"- {name}: {p['summary']}" for name, p in data["placement"].items()]
    lines += ["", "## Results", "", "| runner | model | mode | config | batch | p50 ms | p90 ms | img/s | provider |",
              "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['runner']} | {r['model']} | {r['mode']} | {r.get('config', '')} | {r['batch']} | "
                     f"{r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['throughput_ips']:,.0f} | "
                     f"{str(r.get('providers', ['?'])[0]).replace('ExecutionProvider', '')} |")
    goals = data.get("goals", {})
    lines += ["", "## Goals", ""] + [f"- {k}: {v}" for k, v in goals.items()]
    if data["errors"] or data["skipped"]:
        lines += ["", "## Errors and skipped cases", ""]
        lines += [f"- ERROR {e['case']}: {e['error'][:300]}" for e in data["errors"]]
        lines += [f"- skipped {s}" for s in data["skipped"]]
    if data.get("pytest"):
        lines += ["", f"## pytest -m gpu: exit {data['pytest']['exit_code']}: {data['pytest']['summary']}",
                  "(full output: pytest_gpu.txt)"]
    return "\n".join(lines) + "\n"


def goals(rows: list[dict[str, Any]]) -> dict[str, str]:
    def best(pred: Callable[[dict], bool], key: str, low: bool = False) -> dict | None:
        cands = [r for r in rows if pred(r)]
        return (min if low else max)(cands, key=lambda r: r[key]) if cands else None

    ort256 = best(lambda r: r["runner"] == "onnxruntime" and r["batch"] == 256, "throughput_ips")
    torch256 = best(lambda r: r["runner"] == "torch.eager" and r["batch"] == 256 and r["precision"] == "fp16",
                    "throughput_ips")
    ort1 = best(lambda r: r["runner"] == "onnxruntime" and r["batch"] == 1, "p50_ms", low=True)
    out = {}
    if ort256 and torch256:
        ratio = ort256["throughput_ips"] / torch256["throughput_ips"]
        out["batch 256: best edgecnn/ORT vs PyTorch eager fp16 channels_last"] = (
            f"{ort256['throughput_ips']:,.0f} vs {torch256['throughput_ips']:,.0f} img/s = {ratio:.2f}x "
            f"(goal {GOAL_RATIO}x: {'MET' if ratio >= GOAL_RATIO else 'NOT MET'}; "
            f"{ort256['model']} {ort256['mode']} {ort256['config']})")
    if ort1:
        out["batch 1: best edgecnn/ORT p50"] = (
            f"{ort1['p50_ms']:.3f} ms (goal < {GOAL_P50_MS} ms: "
            f"{'MET' if ort1['p50_ms'] < GOAL_P50_MS else 'NOT MET'}; "
            f"{ort1['model']} {ort1['mode']} {ort1['config']})")
    return out


# ------------------------------------------------------------------------------------------ main

@click.command()
@click.option("--models", "models_dir", type=click.Path(file_okay=False, path_type=Path),
              default=ROOT / "runs" / "gpu_models", show_default=True, help="Folder made by tools/gpu_prepare.py.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=lambda: os.environ.get("OUT", "gpu_bench_out"), help="Results folder  [default: $OUT].")
@click.option("--budget", "budget_s", default=300.0, show_default=True,
              help="Seconds for everything: measurements stop early enough to leave --pytest-timeout for pytest.")
@click.option("--pytest-timeout", default=100.0, show_default=True, help="Seconds reserved for pytest -m gpu.")
@click.option("--seconds-per-point", default=0.4, show_default=True, help="Timed seconds per point (GPU).")
@click.option("--cpu-dry-run", is_flag=True, help="Prove the script on the CPU: tiny runs, batches 1 and 2, no graphs.")
def main(models_dir: Path, out_dir: Path, budget_s: float, pytest_timeout: float, seconds_per_point: float,
         cpu_dry_run: bool) -> None:
    """Benchmark edgecnn's CUDA path against PyTorch eager and run the gpu tests; results in OUT."""
    out_dir.mkdir(parents=True, exist_ok=True)
    provider = "cpu" if cpu_dry_run else "cuda"
    batches = (1, 2) if cpu_dry_run else (1, 32, 256)
    timing = ({"warmup": 1, "runs": 3} if cpu_dry_run else
              {"warmup": 10, "runs": 0, "duration_s": seconds_per_point, "min_runs": 20})
    run = Run(out_dir, budget_s - pytest_timeout, cpu_dry_run, timing)
    os.environ["EDGECNN_GPU_MODELS"] = str(models_dir.resolve())
    run.data["env"] = environment(provider)
    run.data["config"] = {"batches": batches, "timing": timing, "budget_s": budget_s, "models": str(models_dir)}
    click.echo(json.dumps(run.data["env"], indent=1))
    paths = {k: models_dir / f"{MODEL}.{k}.onnx" for k in PRIMARY + OTHERS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"Missing {missing}: run `.venv/bin/python tools/gpu_prepare.py` here and carry "
                         "runs/gpu_models.")
    started = time.monotonic()

    run.guard("placement", lambda: placements(run, list(paths.values()), provider))
    run.guard("torch", lambda: torch_case(run, batches if not cpu_dry_run else (1,), cpu_dry_run))
    all_modes = ("plain", "iobinding", "cudagraph")
    for key in PRIMARY:
        run.guard(f"ort {key}", lambda key=key: ort_case(run, paths[key], provider, batches, modes=all_modes))
    levers = [("heuristic", {"cudnn_conv_algo_search": "HEURISTIC"}),
              ("default", {"cudnn_conv_algo_search": "DEFAULT"}), ("prefer_nhwc", {"prefer_nhwc": True})]
    lever_batches = (1, 256) if not cpu_dry_run else (1,)
    for key in PRIMARY:
        for config, opts in levers:
            run.guard(f"ort {key} {config}", lambda key=key, config=config, opts=opts: ort_case(
                run, paths[key], provider, lever_batches, modes=("iobinding", "cudagraph"), config=config, **opts))
    for key in OTHERS:
        run.guard(f"ort {key}", lambda key=key: ort_case(run, paths[key], provider, batches, modes=all_modes))
    run.guard("classifier end to end", lambda: classifier_end_to_end(run, paths["fp16.nhwc"], provider,
                                                                     lever_batches))
    run.data["measure_s"] = round(time.monotonic() - started, 1)
    run.data["goals"] = goals(run.rows)
    run.save()
    click.echo(f"measurements done in {run.data['measure_s']} s; running pytest -m gpu")
    run.data["pytest"] = run_pytest(out_dir, pytest_timeout)
    run.save()
    (out_dir / "gpu_bench.md").write_text(markdown(run.data))
    click.echo(markdown(run.data))
    bad = [k for k, p in run.data["placement"].items() if provider == "cuda" and p["on_cpu"]]
    if run.data["errors"] or bad:
        click.echo(f"{len(run.data['errors'])} case(s) failed; CPU-placed nodes in {bad or 'none'}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
