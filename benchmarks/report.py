"""Rows -> ratios, `RESULTS.md`, `results.json` and `results.png`.

The ratio of a comparison is `peer / ours` for lower-is-better metrics (time,
memory): above 1 means keras_siglip is faster (smaller).
"""

import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess

CASE_TITLES = {
    "image_encoder": "Image encoder forward",
    "text_encoder": "Text encoder forward",
    "fit_step": "`fit` step (two towers)",
    "naflex_forward": "NaFlex image encoder forward (N=256)",
}

# Rows within this fraction of parity are reported as "on par" (timing noise on
# a shared 2-core VM is a few percent); every ratio below 1 is still listed.
PAR = 0.03

LIBRARIES = ("keras-siglip", "keras", "keras-hub", "jax", "jaxlib", "tensorflow", "torch",
             "transformers", "numpy")
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
            "XLA_FLAGS", "TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "CUDA_VISIBLE_DEVICES")


# ---------------------------------------------------------------------------
# Machine description


def _cpuinfo():
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key and key not in info:
                    info[key] = value
    except OSError:
        pass
    return info


def _memory_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _gpus():
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        return [line for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def busy_processes(sample_s=1.0, threshold=20.0, exclude=()):
    """Other processes using more than `threshold` % of a CPU over `sample_s` seconds.

    Timings on a 2-core machine are only meaningful when it is otherwise idle;
    the runner records this before each backend and the report warns.
    """
    import time

    def snapshot():
        ticks = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid() or int(pid) in exclude:
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, IndexError, ValueError):
                pass
        return ticks

    if not os.path.isdir("/proc"):
        return []
    hz = os.sysconf("SC_CLK_TCK")
    before = snapshot()
    time.sleep(sample_s)
    after = snapshot()
    busy = []
    for pid, t in after.items():
        percent = 100.0 * (t - before.get(pid, t)) / hz / sample_s
        if percent >= threshold:
            try:
                with open(f"/proc/{pid}/cmdline") as f:
                    cmd = f.read().replace("\0", " ").strip()[:120]
            except OSError:
                cmd = "?"
            busy.append({"pid": int(pid), "cpu_percent": round(percent), "cmd": cmd})
    return busy


def describe_machine():
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"),
        "logical_cpus": os.cpu_count(),
        "cpu_flags": sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16",
                                                        "avx512_fp16", "amx_tile", "amx_bf16")),
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ---------------------------------------------------------------------------
# Derived tables


def comparisons(rows):
    """One entry per (row, peer): the values, ratio and agreement."""
    out = []
    for row in rows:
        if "peers" not in row or "error" in row:
            continue
        ours = row["ours"]["value"]
        for peer, entry in row["peers"].items():
            value = entry["value"]
            ratio = (value / ours) if row.get("lower_is_better", True) else (ours / value)
            out.append({
                "case": row["case"],
                "config": row["config"],
                "backend": row["backend"],
                "device": row.get("device"),
                "batch": row.get("batch"),
                "unit": row.get("unit", "ms"),
                "peer": peer,
                "peer_label": entry.get("label", peer),
                "ours_value": ours,
                "peer_value": value,
                "ours_mode": row["ours"].get("mode"),
                "peer_mode": entry.get("mode"),
                "ratio": ratio,
                "max_abs_diff": entry.get("max_abs_diff"),
                "agree": entry.get("agree"),
                "repeats": row["ours"].get("repeats"),
            })
    return out


def peaks(rows):
    return {r["backend"]: r for r in rows if r.get("case") == "matmul_peak" and "error" not in r}


def efficiency(rows):
    """Achieved GFLOP/s of every forward row (ours and peers) vs the matmul peak."""
    by_backend = peaks(rows)
    machine_peak = max((p["gflops_best"] for p in by_backend.values()), default=None)
    out = []
    for row in rows:
        if row.get("case") not in ("image_encoder", "text_encoder", "naflex_forward") or "error" in row:
            continue
        flops = row.get("flops")
        if not flops:
            continue
        impls = {"ours": row["ours"], **row["peers"]}
        for name, entry in impls.items():
            gflops = flops / entry["value"] / 1e6
            own = by_backend.get(row["backend"])
            out.append({
                "case": row["case"], "config": row["config"], "backend": row["backend"],
                "batch": row["batch"], "impl": name, "label": entry.get("label", name),
                "gflop": flops / 1e9, "ms": entry["value"], "gflops": gflops,
                "fraction_of_machine_peak": gflops / machine_peak if machine_peak else None,
                "fraction_of_backend_peak": gflops / own["gflops_best"] if own else None,
            })
    return {"machine_peak_gflops": machine_peak, "peaks": by_backend, "rows": out}


def goals(comps):
    """The issue's goals, checked on the measured comparisons."""
    kh = [c for c in comps if c["peer"] == "keras-hub"]
    hf_image = [c for c in comps if c["peer"] == "hf" and c["case"] == "image_encoder"]
    naflex = [c for c in comps if c["peer"] == "hf" and c["case"] == "naflex_forward"]
    return {
        "naflex_2x_faster_than_hf": {
            "rows": len(naflex),
            "ours_2x_faster": sum(c["ratio"] >= 2.0 for c in naflex),
            "by_backend": {f"{c['backend']} {c['config']}": round(c["ratio"], 3) for c in naflex},
        },
        "not_slower_than_keras_hub": {
            "rows": len(kh),
            "ours_faster_or_equal": sum(c["ratio"] >= 1.0 for c in kh),
            "within_par": sum(c["ratio"] >= 1.0 - PAR for c in kh),
        },
        "faster_than_hf_on_image_encoder": {
            "rows": len(hf_image),
            "ours_faster": sum(c["ratio"] > 1.0 for c in hf_image),
            "by_backend": {f"{c['backend']} {c['config']}": round(c["ratio"], 3) for c in hf_image},
        },
    }


# ---------------------------------------------------------------------------
# Output


def _fmt_ms(value):
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _fmt_diff(value):
    return "-" if value is None else f"{value:.1e}"


def _verdict(ratio):
    if ratio >= 1.0 + PAR:
        return "faster"
    if ratio >= 1.0:
        return "par"
    if ratio >= 1.0 - PAR:
        return "par (slower)"
    return "**slower**"


def _short_mode(mode):
    return (mode or "-").replace("|", "/")


def markdown(result, notes=None):
    m = result["machine"]
    comps = result["comparisons"]
    lines = [f"# keras_siglip benchmarks{' (quick)' if result['quick'] else ''}", ""]
    lines += [
        f"Generated by `{result['command']}` on {m['date_utc']}; total wall time "
        f"**{result['wall_s']:.0f} s** ({', '.join(f'{b} {s:.0f} s' for b, s in result['worker_wall_s'].items())}).",
        "",
        "Ratio = peer time / our time: **above 1 means keras_siglip is faster**. Same weights "
        "(copied between the implementations), same inputs, same process per backend; outputs are "
        "compared before timing (`max |diff|`, agreement within 1e-4 x max(1, max|output|)). "
        "The first (compiling) call and warm-up calls are excluded; times are medians.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs"
        + (f" (flags: {', '.join(m['cpu_flags'])})" if m["cpu_flags"] else ""),
        f"- Memory: {m['memory_gib']} GiB" if m["memory_gib"] else "- Memory: unknown",
        f"- GPU: {'; '.join(m['gpus']) if m['gpus'] else 'none'}",
        f"- OS: {m['os']}, Python {m['python']}",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
    ]
    if m["env"]:
        lines.append("- Environment: " + ", ".join(f"`{k}={v}`" for k, v in m["env"].items()))
    busy = {}
    for key in ("busy_before", "busy_during"):
        for backend, procs in result.get(key, {}).items():
            for p in procs:
                busy.setdefault(backend, {})[p["pid"]] = p
    if busy:
        lines.append("- **WARNING: the machine was not idle** (other processes seen before or during a "
                     "backend's worker: " + "; ".join(
                         f"{b}: " + ", ".join(f"pid {p['pid']} {p['cpu_percent']}% `{p['cmd'][:60]}`"
                                              for p in procs.values()) for b, procs in busy.items())
                     + "); those backends' timings are unreliable.")
    else:
        lines.append("- Idle check: no other process used more than 20% of a CPU before or during any "
                     "backend's worker (sampled every ~15 s).")
    lines.append("")

    g = result["goals"]
    kh, hf = g["not_slower_than_keras_hub"], g["faster_than_hf_on_image_encoder"]
    lines += [
        "## Goals",
        "",
        f"- Not slower than keras-hub on any row: ours faster or equal on "
        f"{kh['ours_faster_or_equal']} of {kh['rows']} rows ({kh['within_par']} within {PAR:.0%} of parity or better).",
        f"- Faster than HF transformers (eager torch) on the image encoder: {hf['ours_faster']} of "
        f"{hf['rows']} rows (" + ", ".join(f"{k}: x{v}" for k, v in hf["by_backend"].items()) + ").",
    ]
    nf = g.get("naflex_2x_faster_than_hf")
    if nf and nf["rows"]:
        lines.append(
            f"- NaFlex image encoder at least 2x faster than HF Siglip2 (eager torch): {nf['ours_2x_faster']} of "
            f"{nf['rows']} rows (" + ", ".join(f"{k}: x{v}" for k, v in nf["by_backend"].items()) + ").")
    lines.append("")

    lines += ["## Comparisons", ""]
    header = ("| row | config | batch | backend | ours ms | peer | peer ms | ratio | verdict | "
              "max \\|diff\\| | agree | mode (ours; peer) |")
    lines += [header, "|" + "---|" * 12]
    for c in comps:
        mode = _short_mode(c["ours_mode"])
        if c["peer_mode"] != c["ours_mode"]:
            mode += "; " + _short_mode(c["peer_mode"])
        lines.append(
            f"| {CASE_TITLES.get(c['case'], c['case'])} | {c['config']} | {c['batch']} | {c['backend']} | "
            f"{_fmt_ms(c['ours_value'])} | {c['peer_label']} | {_fmt_ms(c['peer_value'])} | "
            f"**{c['ratio']:.2f}** | {_verdict(c['ratio'])} | {_fmt_diff(c['max_abs_diff'])} | "
            f"{'yes' if c['agree'] else 'NO'} | {mode} |"
        )
    lines.append("")
    lines.append("For `fit` rows the agreement compares the losses of the first two steps (same "
                 "weights, same data, same Adam(1e-4), so the same trajectory).")
    lines.append("")

    eff = result["efficiency"]
    lines += ["## Efficiency: achieved FLOP/s vs the measured float32 matmul peak", ""]
    lines += ["| backend | matmul peak mode | best GFLOP/s | median GFLOP/s |", "|---|---|---|---|"]
    for backend, p in eff["peaks"].items():
        lines.append(f"| {backend} | {p['mode']} | {p['gflops_best']:.0f} | {p['gflops_median']:.0f} |")
    if eff["machine_peak_gflops"]:
        lines += ["", f"Machine peak (best of the backends): **{eff['machine_peak_gflops']:.0f} GFLOP/s**. "
                  "FLOPs are counted analytically (2·M·N·K for every matmul: patch embedding, q/k/v/out "
                  "projections, QKᵀ and AV, MLP, MAP head, text head; elementwise work not counted).", ""]
    lines += ["| row | config | batch | backend | implementation | GFLOP | ms | GFLOP/s | "
              "of machine peak | of backend's peak |", "|" + "---|" * 10]
    for e in eff["rows"]:
        fm = e["fraction_of_machine_peak"]
        fb = e["fraction_of_backend_peak"]
        lines.append(
            f"| {CASE_TITLES.get(e['case'], e['case'])} | {e['config']} | {e['batch']} | {e['backend']} | "
            f"{e['label']} | {e['gflop']:.1f} | {_fmt_ms(e['ms'])} | {e['gflops']:.0f} | "
            f"{'-' if fm is None else f'{fm:.0%}'} | {'-' if fb is None else f'{fb:.0%}'} |"
        )
    lines.append("")

    packing = next((r for r in result["rows"] if r.get("case") == "packing" and "error" not in r), None)
    if packing:
        lines += ["## NaViT packing: share of real patches", "",
                  f"{packing['images']} images with log-uniform sides in [32, 512] px (aspect ratios up to "
                  f"16:1), patch {packing['patch_size']}, first-fit packing (`keras_siglip.data.pack_dataset`, "
                  "buffer 16, up to 16 images per sequence). Not a timing: the fraction of sequence tokens "
                  "that are real patches; the rest is padding the model computes for nothing.", "",
                  "| images as | N | packed | one image per sequence (padded to 256) | images per packed sequence |",
                  "|---|---|---|---|---|"]
        for r in packing["results"]:
            lines.append(f"| {r['setting']} | {r['sequence_length']} | {r['packed_real_fraction']:.1%} | "
                         f"{r['one_per_sequence_real_fraction']:.1%} | {r['images_per_sequence']:.2f} |")
        lines.append("")

    slower = [c for c in comps if c["ratio"] < 1.0]
    lines += ["## Rows where keras_siglip is slower than a peer", ""]
    if slower:
        for c in slower:
            lines.append(f"- {CASE_TITLES.get(c['case'], c['case'])}, {c['config']}, {c['backend']}, vs "
                         f"{c['peer_label']}: ratio {c['ratio']:.2f} ({_verdict(c['ratio'])}).")
        lines += ["", "Each is explained in the analysis below.", ""]
    else:
        lines += ["None.", ""]

    failed = [r for r in result["rows"] if "error" in r]
    disagree = [c for c in comps if c["agree"] is False]
    if failed or disagree:
        lines += ["## Problems", ""]
        for r in failed:
            lines.append(f"- {r['case']} {r.get('config')} on {r['backend']} failed: `{r['error']}`")
        for c in disagree:
            lines.append(f"- {c['case']} {c['config']} {c['backend']} vs {c['peer']}: outputs disagree "
                         f"(max |diff| {c['max_abs_diff']}); its timing compares different computations.")
        lines.append("")

    if notes:
        lines += [notes.rstrip(), ""]
    lines += [
        "## Reproduce",
        "",
        "```",
        "python -m benchmarks            # full run (this file, results.json, results.png)",
        "python -m benchmarks --quick    # < 3 min; writes benchmarks/quick/",
        "python -m benchmarks.quantization  # int8/int4/float8 accuracy and speed, all backends (~13 min)",
        "python -m benchmarks.conversion_memory  # converter peak memory on So400m/16, all backends (~6 min)",
        "python -m benchmarks.startup    # cold start, memory and imports of each CLI command (~5 min)",
        "benchmarks/gpu.sh               # JAX + torch rows on a GPU machine; writes benchmarks/gpu/",
        "```",
        "",
    ]
    return "\n".join(lines)


def chart(result, path):
    """Left: ratios per comparison (log scale, line at 1). Right: achieved FLOP/s of each
    forward row as a fraction of the machine's matmul peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = result["comparisons"]
    if not comps:
        return None
    eff = [e for e in result["efficiency"]["rows"] if e["fraction_of_machine_peak"] is not None]
    colors = {"keras-hub": "#1f77b4", "hf": "#ff7f0e", "ours": "#2ca02c"}
    height = 0.3 * max(len(comps), len(eff)) + 1.8
    fig, axes = plt.subplots(1, 2 if eff else 1, figsize=(17 if eff else 11, height),
                             gridspec_kw={"width_ratios": [3, 2]} if eff else None, squeeze=False)
    ax = axes[0][0]
    labels = [f"{CASE_TITLES.get(c['case'], c['case']).replace('`', '')} {c['config']} b{c['batch']} "
              f"[{c['backend']}] vs {c['peer_label']}" for c in comps]
    ratios = [c["ratio"] for c in comps]
    y = list(range(len(comps)))[::-1]
    ax.barh(y, ratios, color=[colors.get(c["peer"], "#7f7f7f") for c in comps])
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    for yi, r in zip(y, ratios):
        ax.text(r, yi, f" {r:.2f}", va="center", fontsize=7)
    ax.set_xlabel("peer time / keras_siglip time (log; > 1: keras_siglip faster)")
    lo, hi = min(ratios + [1.0]), max(ratios + [1.0])
    ax.set_xlim(lo / 1.5, hi * 2.5)
    ax.set_title(f"keras_siglip vs peers{' (quick)' if result['quick'] else ''}: "
                 f"{result['machine']['cpu_model']}, {result['machine']['logical_cpus']} CPUs", fontsize=9)
    if eff:
        ax = axes[0][1]
        labels = [f"{CASE_TITLES.get(e['case'], e['case']).replace(' forward', '')} {e['config']} "
                  f"[{e['backend']}] {e['label']}" for e in eff]
        fractions = [100 * e["fraction_of_machine_peak"] for e in eff]
        y = list(range(len(eff)))[::-1]
        ax.barh(y, fractions, color=[colors.get(e["impl"], "#7f7f7f") for e in eff])
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=7)
        for yi, f in zip(y, fractions):
            ax.text(f, yi, f" {f:.0f}%", va="center", fontsize=7)
        ax.set_xlim(0, max(100, max(fractions) * 1.15))
        ax.set_xlabel(f"achieved FLOP/s, % of matmul peak ({result['efficiency']['machine_peak_gflops']:.0f} GFLOP/s)")
        ax.set_title("Efficiency of each forward", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_result(rows, machine, command, quick, wall_s, worker_wall_s, busy_before=None,
                 busy_during=None):
    comps = comparisons(rows)
    return {
        "busy_before": busy_before or {},
        "busy_during": busy_during or {},
        "command": command,
        "quick": quick,
        "wall_s": wall_s,
        "worker_wall_s": worker_wall_s,
        "machine": machine,
        "goals": goals(comps),
        "comparisons": comps,
        "efficiency": efficiency(rows),
        "rows": rows,
    }


def write_all(result, out_dir, notes=None, stem=("RESULTS.md", "results.json", "results.png")):
    os.makedirs(out_dir, exist_ok=True)
    md_path, json_path, png_path = (os.path.join(out_dir, s) for s in stem)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(md_path, "w") as f:
        f.write(markdown(result, notes))
    chart(result, png_path)
    return md_path, json_path, png_path
