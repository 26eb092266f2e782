"""Coverage of every stage of a workspace, and its quarantine: what ``mangaka status`` prints.

``done``/``total`` count items for per-item arrays (an item is done when its shard has a
completion marker) and checkpoints for training stages (done when a ``latest`` exists).
"""

from __future__ import annotations

from typing import Any

from storage.bulk import bulk_build
from storage.checkpoints import checkpoint_metrics, has_tag, list_checkpoints, list_models
from storage.items import ItemCounts, is_index_array, item_counts
from storage.workspace import Workspace, family_of


@bulk_build
def workspace_status(ws: Workspace) -> dict[str, Any]:
    arrays = ws.list_arrays()
    counts: dict[str, ItemCounts] = {}
    stages: dict[str, dict[str, int]] = {}
    for name in arrays:
        family = family_of(name)
        if is_index_array(name):
            continue
        if family not in counts:
            counts[family] = item_counts(ws, family)
        c = counts[family]
        if name == f"{family}/images":
            # planned but not yet stored (a killed or running ingestion) is not done
            stages[name] = {"done": c.items, "total": c.items + c.pending}
            if c.pending:
                stages[name]["pending"] = c.pending
            continue
        done = sum(c.live.get(shard, 0) for shard in ws.markers(name))
        stages[name] = {"done": done, "total": c.items}
    for model in list_models(ws):
        n = len(list_checkpoints(ws, model))
        has_latest = has_tag(ws, model)
        if not has_latest and not n:  # a family of models, one per key (fast-style/<style digest>)
            keys = [k for k in ws.loc.list(f"models/{model}") if has_tag(ws, f"{model}/{k.rsplit('/', 1)[-1]}")]
            if keys:
                stages[model] = {"done": len(keys), "total": len(keys), "models": len(keys)}
                continue
        stages[model] = {"done": int(has_latest), "total": 1, "checkpoints": n}
        if has_latest:
            metrics = checkpoint_metrics(ws, model)
            stages[model].update(
                {
                    k: metrics[k]
                    for k in (
                        "miou",
                        "semantic_miou",
                        "pixel_accuracy",
                        "palette_accuracy",
                        "commonest_colour_accuracy",
                        "hint_accuracy",
                        "boundary_accuracy",
                        "hint_boundary_accuracy",
                        "edges_on_lines",
                        "hint_edges_on_lines",
                        "f1",
                        "xdog_f1",
                        "canny_f1",
                        "holdout",
                        "pretrained_f1",
                        "family",
                        "family_f1",
                        "family_xdog_f1",
                        "family_canny_f1",
                        "epoch",
                        "step",
                        *STYLE_KEYS,
                    )
                    if metrics.get(k) is not None
                }
            )
    duplicates = sum(c.duplicates for c in counts.values())
    return {
        "workspace": ws.url,
        "stages": stages,
        "duplicates_skipped": duplicates,
        "quarantine": ws.quarantine_entries(),
        "models": {k: v for k, v in stages.items() if "/" not in k},
        "runs": last_runs(ws),
    }


def last_runs(ws: Workspace, limit: int = 10) -> list[dict[str, Any]]:
    """The newest run records; a RUNNING record whose flow's lease is gone or stale was interrupted."""
    from storage.lease import WorkspaceLease

    runs = ws.runs(limit)
    for r in runs:
        if r.get("state") != "RUNNING":
            continue
        lease = WorkspaceLease(ws.loc, str(r.get("flow", "")))
        held = lease.current()
        if held is None or held.get("run") != r.get("name") or lease.stale(held):
            r["state"] = "INTERRUPTED"
    return [
        {k: r.get(k) for k in ("name", "flow", "state", "start", "end", "seconds", "message") if k in r} for r in runs
    ]


def holdout_text(holdout: str | None) -> str:
    """What a line-art checkpoint's held-out F1 was measured on, for a sentence."""
    if not holdout:
        return ""
    if holdout == "annotated":  # train-lineart --finetune
        return " on held-out annotated images (region boundaries as truth)"
    return f" on style family {holdout} (never trained on)"


STYLE_KEYS = tuple(f"style_fidelity_{c}" for c in ("hair", "skin", "clothes", "background")) + (
    "latent_spread",
    "latent_spread_baseline",
    "real_spread",
)


def style_text(st: dict[str, Any]) -> str:
    """GauGAN's style figures for a status line (empty without them)."""
    ratios = [f"{k.removeprefix('style_fidelity_')} {st[k]:.2f}" for k in STYLE_KEYS[:4] if k in st]
    text = f"; style fidelity {', '.join(ratios)} (1 = reference ignored)" if ratios else ""
    if "latent_spread" in st:
        text += f"; latent spread {st['latent_spread']:.1f} Lab"
        parts = [
            f"{label} {st[k]:.1f}"
            for k, label in (("latent_spread_baseline", "fixed latent"), ("real_spread", "real images"))
            if k in st
        ]
        text += f" ({', '.join(parts)})" if parts else ""
    return text


def status_lines(status: dict[str, Any]) -> list[str]:
    """A plain-text table of a status object, for terminals and reports."""
    lines = [f"workspace: {status['workspace']}", "", f"{'stage':<28} {'done':>9} {'total':>9}  coverage"]
    for name, st in sorted(status["stages"].items()):
        pct = 100.0 * st["done"] / st["total"] if st["total"] else 0.0
        extra = f"  validation mIoU {st['miou']:.3f}" if "miou" in st else ""
        if "palette_accuracy" in st:
            extra = f"  held-out palette accuracy {st['palette_accuracy']:.3f}"
            if st.get("boundary_accuracy") is not None:
                hint = st.get("hint_boundary_accuracy")
                extra += f"; within 3 px of a colour edge {st['boundary_accuracy']:.3f}"
                extra += f" (hint alone {hint:.3f})" if hint is not None else ""
            if st.get("edges_on_lines") is not None:
                extra += f"; colour edges on the lines {st['edges_on_lines']:.3f}"
        if "f1" in st:
            extra = f"  held-out line F1 {st['f1']:.3f}{holdout_text(st.get('holdout'))}"
            classic = [f"{m} {st[f'{m}_f1']:.3f}" for m in ("xdog", "canny") if f"{m}_f1" in st]
            if "pretrained_f1" in st:
                classic.append(f"before fine-tuning {st['pretrained_f1']:.3f}")
            if classic:
                extra += f"; same images: {', '.join(classic)}"
            if "family_f1" in st:
                classic = [f"{m} {st[f'family_{m}_f1']:.3f}" for m in ("xdog", "canny") if f"family_{m}_f1" in st]
                extra += f"; F1 {st['family_f1']:.3f}{holdout_text(st.get('family'))}"
                extra += f"; same images: {', '.join(classic)}" if classic else ""
        if st.get("pending"):
            extra = f"  {st['pending']} planned, not stored yet: run the ingestion again to finish"
        if "semantic_miou" in st:
            extra = f"  step {st.get('step')}, semantic mIoU {st['semantic_miou']:.3f}" + style_text(st)
        lines.append(f"{name:<28} {st['done']:>9} {st['total']:>9}  {pct:6.1f}%{extra}")
    if not status["stages"]:
        lines.append("(nothing yet: run `mangaka ingest-images SRC`)")
    q = status["quarantine"]
    lines += ["", f"duplicates skipped: {status.get('duplicates_skipped', 0)}", f"quarantined: {len(q)}"]
    lines += [f"  {e['stage']}: {e['source']}: {e['reason']}" for e in q[:50]]
    if len(q) > 50:
        lines.append(f"  ... and {len(q) - 50} more (status --json lists all)")
    runs = status.get("runs") or []
    if runs:
        lines += ["", "last runs:"]
        for r in runs[:10]:
            took = f"{r['seconds']:.0f} s" if isinstance(r.get("seconds"), (int, float)) else ""
            lines.append(
                f"  {str(r.get('start', ''))[:19]:<19}  {r.get('state', ''):<11} {took:>7}  {r.get('name', '')}"
            )
    return lines
