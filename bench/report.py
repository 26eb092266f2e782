"""The benchmark table: every ``bench/results/*.json`` as one markdown table with its baseline.

    .venv/bin/python -m bench.report      # the last step of `make bench`

Writes ``bench/results/README.md`` (and prints it): one row per figure, the baseline it
is compared with (measured in the same benchmark run), the ratio, the goal, and the
machine the results came from.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _load(name: str) -> dict[str, Any] | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _f(x: float, unit: str = "") -> str:
    if x >= 100:
        text = f"{x:,.0f}"
    elif x >= 10:
        text = f"{x:.1f}"
    else:
        text = f"{x:.3g}"
    return f"{text} {unit}".strip()


def rows() -> list[tuple[str, str, str, str, str]]:
    """(benchmark, figure, baseline, ratio, goal) for every result on disk."""
    out: list[tuple[str, str, str, str, str]] = []
    ing = _load("ingest")
    if ing:
        names = {
            "jpeg_512": "JPEGs into a jpeg workspace (stored as they are)",
            "raw_512": "JPEGs into a raw workspace (decoded, zstd)",
            "png_jpeg_512": "PNGs into a jpeg workspace (encoded once)",
            "jpeg_256": "JPEGs resized to 256 px, jpeg workspace (encoded once)",
        }
        for key, what in names.items():
            r = ing.get(key)
            if r is None:
                continue
            mem = ", ".join(f"{k}: {v} MB" for k, v in r["peak_rss_mb"].items())
            out.append(
                (
                    f"Ingestion, {ing['images']} {what}",
                    f"{_f(r['mangaka_images_per_s'], 'img/s')} (peak RSS {mem})",
                    f"plain PIL decode-and-resize loop {_f(r['baseline_images_per_s'], 'img/s')}",
                    f"{r['speedup']:.2f}x",
                    "≥ 1.6x" if key == "jpeg_512" else "—",
                )
            )
            out.append(
                (
                    f"Stored bytes of corpus/images, {what}",
                    f"{_f(r['stored_mb'], 'MB')}",
                    f"source files {_f(r['source_mb'], 'MB')}",
                    f"{r['stored_bytes_vs_source']:.3f}x",
                    "≤ 1.05x" if key == "jpeg_512" else "—",
                )
            )
        j, raw = ing.get("jpeg_512"), ing.get("raw_512")
        if j and raw:
            eq = j["read_back_equals_source_decode"]
            out.append(
                (
                    "Reading corpus/images at 512 px, one reader thread (jpeg workspace)",
                    f"{_f(j['read_images_per_s_1_thread'], 'img/s')}; at 256 px by DCT scaling "
                    f"{_f(j['read_at_256_images_per_s_1_thread'], 'img/s')}; {eq['equal']} of {eq['checked']} "
                    "items equal a plain libjpeg-turbo decode of their source",
                    f"raw workspace {_f(raw['read_images_per_s_1_thread'], 'img/s')}",
                    f"{j['read_images_per_s_1_thread'] / raw['read_images_per_s_1_thread']:.2f}x",
                    "≥ 1,135 img/s",
                )
            )
    aug = _load("augment")
    if aug:
        out.append(
            (
                "Augmentation, 512 px",
                f"{_f(aug['mangaka_opencv']['samples_per_s'], 'samples/s')}",
                f"torchvision v2 {_f(aug['torchvision_v2']['samples_per_s'], 'samples/s')}",
                f"{aug['mangaka_opencv']['samples_per_s'] / aug['torchvision_v2']['samples_per_s']:.0f}x",
                "—",
            )
        )
        if "torchvision_v2_without_elastic" in aug:
            out.append(
                (
                    "Augmentation, 512 px, image/mask agreement after the warp (palette-painted images)",
                    f"{aug['mangaka_opencv']['palette_agreement']}",
                    f"torchvision v2 {aug['torchvision_v2']['palette_agreement']}; torchvision v2 without its "
                    f"elastic step {_f(aug['torchvision_v2_without_elastic']['samples_per_s'], 'samples/s')}",
                    "—",
                    "—",
                )
            )
    for name in ("pseudolabel", "pseudolabel-gpu"):
        pl = _load(name)
        if not pl:
            continue
        gpu = name.endswith("gpu")
        naive = pl["model_only_images_per_s"]["eager_nchw_batch16"]
        engine = pl["auto_engine"]
        rates = pl.get("flow_images_per_s") or pl["end_to_end_one_shard_images_per_s"]
        where = f"`mangaka pseudolabel` flow, {pl['flow_images']} images" if "flow_images" in pl else "one shard"
        others = "".join(f"; {k} {_f(v)} img/s" for k, v in rates.items() if k != engine)
        peak = (pl.get("flow_peak_rss_mb") or {}).get(engine)
        if isinstance(peak, dict):
            others += f"; peak RSS largest worker {peak['largest_worker']} MB, all processes {peak['tree']} MB"
        big = pl.get("flow_larger_corpus")
        if big and isinstance(big["peak_rss_mb"], dict):
            bp = big["peak_rss_mb"]
            others += f" ({big['images']} images: {bp['largest_worker']} / {bp['tree']} MB)"
        goal = 1000 if gpu else 10
        met = "met" if rates[engine] >= goal else "not met"
        out.append(
            (
                f"Pseudo-labelling, {pl['size']} px, {pl['device']} x{pl['threads']}, end to end ({where})",
                f"{_f(rates[engine], 'img/s')} ({engine}, the default here{others})",
                f"naive eager NCHW fp32 inference {_f(naive, 'img/s')}",
                f"{rates[engine] / naive:.1f}x",
                f"≥ 1000 img/s on an H100: {met}" if gpu else f"≥ 10 img/s on CPU: {met}",
            )
        )
        bc = pl.get("by_codec")
        if bc:
            e2e, rd = bc["end_to_end_one_shard_images_per_s"], bc["read_images_per_s_1_thread"]
            out.append(
                (
                    f"Pseudo-labelling one shard, {pl['device']}, jpeg workspace against a raw one ({bc['engine']})",
                    f"{_f(e2e['jpeg'], 'img/s')} (one reader thread {_f(rd['jpeg'], 'img/s')})",
                    f"raw workspace {_f(e2e['raw'], 'img/s')} (reader {_f(rd['raw'], 'img/s')})",
                    f"{e2e['jpeg'] / e2e['raw']:.2f}x",
                    "not slower",
                )
            )
        if "device_decode_images_per_s" in pl:
            out.append(
                (
                    f"JPEG decoding on the device (nvJPEG), {pl['size']} px, {pl['device']}",
                    _f(pl["device_decode_images_per_s"], "img/s"),
                    f"one host reader thread {_f(pl['host_one_thread']['read_images_per_s_1_threads'], 'img/s')}",
                    f"{pl['device_decode_images_per_s'] / pl['host_one_thread']['read_images_per_s_1_threads']:.1f}x",
                    "—",
                )
            )
    if not _load("pseudolabel-gpu"):
        h100 = ("Pseudo-labelling, 512 px, one H100", "not measured (no GPU machine yet)", "—", "—", "≥ 1000 img/s")
        out.append(h100)
    counts = sorted(
        int(p.stem.split("-")[1])
        for p in RESULTS.glob("lineart-*.json")
        if p.stem.count("-") == 1 and p.stem.split("-")[1].isdigit()
    )
    for name in (f"lineart-{c}" for c in counts):
        la = _load(name)
        if not la:
            continue
        rates = ", ".join(f"{k} {_f(v)}" for k, v in la["method_images_per_s_one_process"].items())
        if name == f"lineart-{counts[-1]}":
            out.append(("Line art per method, 512 px, one process", f"{rates} img/s", "—", "—", "—"))
        out.append(
            (
                f"render-lineart xdog flow, {la['images']} images"
                + (" (synth + recoloured copies)" if "copies" in la.get("corpus", "") else ""),
                _f(la["xdog_render_lineart_flow_images_per_s"], "img/s"),
                f"bare OpenCV loop: files {_f(la['xdog_bare_opencv_files_images_per_s'])}, "
                f"in memory {_f(la['xdog_bare_opencv_pool_images_per_s'])} img/s",
                f"{la['flow_vs_bare_files_ratio']:.2f}x / {la['flow_vs_bare_ratio']:.2f}x",
                "≥ 0.8x",
            )
        )
        raw = _load(f"{name}-raw")
        if raw:
            ratio = la["xdog_render_lineart_flow_images_per_s"] / raw["xdog_render_lineart_flow_images_per_s"]
            out.append(
                (
                    f"render-lineart xdog flow, {la['images']} images, jpeg workspace against a raw one",
                    _f(la["xdog_render_lineart_flow_images_per_s"], "img/s"),
                    f"raw workspace {_f(raw['xdog_render_lineart_flow_images_per_s'], 'img/s')}",
                    f"{ratio:.2f}x",
                    "not slower",
                )
            )
    lq = _load("lineart-quality")
    for run in (lq or {}).get("runs", []):
        fam = run["families"][run["holdout"]]
        margin = fam["artline"] - fam["xdog"]
        out.append(
            (
                f"Learned line art on a style family never trained on ({run['holdout']}), {lq['size']} px, "
                f"boundary F1 at 2 px, {lq['eval_images_per_family']} pairs (train-lineart's default: "
                f"{run['train_seconds']:.0f} s on {', '.join(run['train_families'])})",
                f"{fam['artline']:.3f}",
                f"XDoG {fam['xdog']:.3f}, Canny {fam['canny']:.3f}",
                f"{margin:+.3f}",
                "≥ 0.93 and ≥ +0.03; training ≤ 15 min",
            )
        )
        others = ", ".join(
            f"{f} {r['artline']:.3f} (XDoG {r['xdog']:.3f})" for f, r in run["families"].items() if f != run["holdout"]
        )
        out.append((f"Learned line art, the families it trained on (holdout {run['holdout']})", others, "—", "—", "—"))
    lf = _load("lineart-finetune")
    if lf:
        u = lf["unseen_f1"]
        out.append(
            (
                f"Learned line art fine-tuned on {lf['annotated']} annotated portraits of a style never pre-trained on "
                f"(synth), boundary F1 at 2 px on {lf['unseen_images']} unannotated ones at {lf['side']} px "
                f"(train-lineart --finetune, pre-trained at {lf['size']} px; {lf['train_seconds']:.0f} s)",
                f"{u['finetuned']:.3f}",
                f"XDoG {u['xdog']:.3f}, Canny {u['canny']:.3f}, pre-trained only {u['pretrained']:.3f}",
                f"{u['finetuned'] - u['xdog']:+.3f}",
                "above XDoG where it was not trained",
            )
        )
    st = _load("styles-cpu")
    if st:
        out.append(
            (
                "Posterisation",
                _f(st["posterize_vectorised_pixels_per_s"] / 1e6, "Mpx/s"),
                f"the seed's per-pixel loop {_f(st['posterize_loop_pixels_per_s'] / 1e3, 'kpx/s')}",
                f"{st['posterize_ratio']:,}x",
                "≥ 1000x",
            )
        )
        out.append(
            (
                "Gatys per image, 512 px",
                f"{_f(st['gatys_seconds_per_image'], 's')} ({st['gatys_epochs']} epochs, {st['gatys_stopped_by']})",
                "—",
                "—",
                "≤ 5 min (CPU)",
            )
        )
        npr = st.get("npr_images_per_s")
        if npr:
            out.append(
                (
                    "NPR styles, 512 px, one process",
                    ", ".join(f"{k} {_f(v)}" for k, v in npr.items()) + " img/s",
                    "—",
                    "—",
                    "—",
                )
            )
        out.append(
            (
                f"Fast style, 512 px ({st.get('fast_style_model', 'johnson-small')})",
                _f(st["fast_style_images_per_s"], "img/s")
                + "".join(
                    f"; {m} {_f(r, 'img/s')}"
                    for m, r in st.get("fast_style_images_per_s_by_model", {}).items()
                    if m != st.get("fast_style_model")
                ),
                "Gatys on the same image",
                f"{st['fast_vs_gatys_ratio']:.0f}x",
                "≥ 100x",
            )
        )
    co = _load("colorizer")
    if co and "hinted_accuracy" in co:
        out.append(
            (
                f"Colouriser, {co['size']} px, held-out palette accuracy",
                f"{co['hinted_accuracy']} with the {co['hint_size']}x{co['hint_size']} colour hint "
                f"({co['hinted_seconds']} s), {co['line_only_accuracy']} from line art alone",
                f"hint alone {co['hint_accuracy']}; commonest colour {co['commonest_accuracy']}; "
                f"semantic oracle {co['semantic_oracle_accuracy']}",
                f"+{co['hinted_accuracy'] - co['hint_accuracy']:.3f}",
                "better than the seed's 290M stack with ≤ 5M parameters",
            )
        )
    ga = _load("gaugan-cpu")
    if ga:
        out.append(
            (
                f"GauGAN, {ga['size']} px, batch {ga['batch']}, ngf {ga['ngf']}",
                f"train {ga['train_steps_per_s']} steps/s, generate {_f(ga['generate_images_per_s'], 'img/s')}",
                "—",
                "—",
                "—",
            )
        )
    orch = _load("orchestration")
    if orch:
        for o in orch.get("overhead_runs", [orch["overhead"]]):
            out.append(
                (
                    f"Orchestration overhead, {o['stage']}, {o['images']} images, shards of {o['shard_size']}",
                    f"flow {_f(o['flow_s'], 's')}, without heartbeats {_f(o['flow_no_heartbeats_s'], 's')}, "
                    f"Dask alone {_f(o['dask_only_s'], 's')}",
                    f"plain loop over the same shards {_f(o['plain_loop_s'], 's')}",
                    f"{o['overhead_flow_pct']:+}% ({o['overhead_flow_no_heartbeats_pct']:+}% without heartbeats; "
                    f"Dask alone {o['overhead_dask_pct']:+}%)",
                    "≤ 5%",
                )
            )
        p = orch.get("overhead_pseudolabel")
        if p:
            out.append(
                (
                    f"Orchestration overhead, {p['stage']}, {p['images']} images, shards of {p['shard_size']}",
                    f"flow {_f(p['flow_s'], 's')}",
                    f"plain loop over the same shards {_f(p['plain_loop_s'], 's')}",
                    f"{p['overhead_flow_pct']:+}%",
                    "≤ 5%",
                )
            )
        mem = orch["peak_memory_render_lineart_xdog"]
        out.append(
            (
                "Peak memory, render-lineart, whole process tree",
                ", ".join(f"{k} images: {v['peak_rss_mb']} MB" for k, v in mem.items()),
                "—",
                "—",
                "flat",
            )
        )
    out.extend(scale_rows())
    return out


SCALE_GOALS = {  # step -> (what, goal in seconds)
    "ingest": ("ingest-images, all new", 300),
    "ingest_noop": ("ingest-images again (nothing new)", 10),
    "render_xdog": ("render-lineart xdog", None),
    "render_noop": ("render-lineart xdog again (nothing to do)", 10),
    "status": ("status", 3),
    "render_noop_temporary_server": ("the no-op render with a temporary Prefect server (MANGAKA_API_IDLE=0)", None),
}


def scale_rows() -> list[tuple[str, str, str, str, str]]:
    """bench/scale.py: the real commands over 302,652 tiny images, local and on S3."""

    def _rss(r: dict) -> str:  # the whole tree (workers too), and the command's own process
        own = r.get("peak_rss_command_mb")
        return f"{r['peak_rss_mb']} MB" + (f" (command {own} MB)" if own else "")

    sc = _load("scale")
    if not sc:
        return []
    out = []
    for run in sc["runs"]:
        where = "local disk" if run["store"] == "local" else "S3 (moto on loopback)"
        small = next((r for r in sc["runs"] if r["store"] == run["store"] and r["items"] < run["items"]), None)
        for step, (what, goal) in SCALE_GOALS.items():
            r = run.get(step)
            if not r:
                continue
            figure = f"{_f(r['seconds'], 's')}, peak RSS {_rss(r)}"
            if "s3_requests_total" in r:
                figure += f", {r['s3_requests_total']:,} S3 requests"
            base, ratio = "—", "—"
            if small and small.get(step):
                b = small[step]
                base = f"{small['items']:,} items: {_f(b['seconds'], 's')}, peak RSS {_rss(b)}"
                if "s3_requests_total" in b:
                    base += f", {b['s3_requests_total']:,} S3 requests"
                ratio = f"time {r['seconds'] / b['seconds']:.2f}x, memory {r['peak_rss_mb'] / b['peak_rss_mb']:.2f}x"
                if r.get("peak_rss_command_mb") and b.get("peak_rss_command_mb"):
                    ratio += f" (command {r['peak_rss_command_mb'] / b['peak_rss_command_mb']:.2f}x)"
            goals = [f"≤ {goal} s" if goal else "", "memory ≤ 1.2x" if small else ""]
            out.append(
                (
                    f"Scale, {run['items']:,} tiny images, {where}: {what}",
                    figure,
                    base,
                    ratio,
                    ", ".join(g for g in goals if g) or "—",
                )
            )
        out.append(
            (
                f"Scale, {run['items']:,} tiny images, {where}: bytes of _meta",
                f"{run['meta_bytes_per_item']:.0f} bytes per item",
                "a Danbooru2019-Portraits JPEG: 52.9 KB",
                f"{run['meta_pct_of_danbooru_jpegs']:.2f}%",
                "≤ 1%",
            )
        )
    return out


# The guide that explains each row (its design, options and how the figure was measured).
GUIDES = (
    ("Ingestion", "../../docs/INGEST.md#performance"),
    ("Augmentation", "../../docs/SEGMENTATION.md#augmentation"),
    ("Pseudo-labelling", "../../docs/SEGMENTATION.md#pseudo-labelling-performance"),
    ("render-lineart", "../../docs/LINEART.md#performance"),
    ("Learned line art", "../../docs/LINEART.md#quality"),
    ("Line art", "../../docs/LINEART.md#performance"),
    ("Posterisation", "../../docs/STYLE.md#performance"),
    ("NPR", "../../docs/STYLE.md#performance"),
    ("Gatys", "../../docs/STYLE.md#performance"),
    ("Fast style", "../../docs/STYLE.md#performance"),
    ("Colouriser", "../../docs/STYLE.md#the-colouriser"),
    ("GauGAN", "../../docs/GAUGAN.md#performance"),
    ("Orchestration", "../../docs/OPERATIONS.md#orchestration-overhead"),
    ("Peak memory", "../../docs/OPERATIONS.md#orchestration-overhead"),
    ("Scale", "../../docs/OPERATIONS.md#danbooru-scale"),
)


def guide(benchmark: str) -> str:
    """A markdown link to the guide that explains a row, or a dash."""
    for prefix, link in GUIDES:
        if benchmark.startswith(prefix):
            return f"[{link.rsplit('/', 1)[1].split('#')[0]}]({link})"
    return "—"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}"


def main() -> None:
    lines = [
        "# Benchmark results",
        "",
        "Generated by `bench/report.py`; do not edit by hand. Reproduce with `make bench`: it runs",
        "every benchmark, writes `bench/results/*.json` and ends by writing this table to",
        "`bench/results/README.md`; each benchmark also runs alone (`.venv/bin/python -m bench.<name>`,",
        "then `.venv/bin/python -m bench.report`).",
        "",
        f"This table was written on: {machine()}.",
        "Each row is the last run of its benchmark, which may have run on another machine (the JSON",
        "files do not record it). Ratios compare with a baseline measured in the same benchmark run.",
        "The guide column links to the design, the options and the finer measurements behind each row.",
        "",
        "| benchmark | figure | baseline (same run) | ratio | goal | guide |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {' | '.join((*r, guide(r[0])))} |" for r in rows()]
    text = "\n".join(lines) + "\n"
    (RESULTS / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
