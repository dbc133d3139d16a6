"""The table and the plot of a study (``semiseg study``), from its run records.

Pure: the functions here take the records ``semiseg.engine.study.collect`` reads from the run folders (dicts with
``arm``, ``labels``, ``seed``, ``miou``, ``iou``, ``groups``, ``train_seconds``, ``pseudo_labels``, ...) and return
rows, markdown or a PNG; they read no run folder. ``summarize`` makes one row per arm and label setting (mean over
the finished seeds, the paired gain over the baseline per seed, the share of the gap to the full-label ceiling, the
``verdict``); ``markdown_table``, ``runs_table``, ``groups_table`` and ``class_table`` render them; ``plot`` draws
mIoU against the number of labeled images.
"""

from __future__ import annotations

import math
import statistics


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def train_seconds(events: list[dict]) -> float | None:
    """Wall time of training from metrics.jsonl: the sum over sessions (start or resume -> last event)."""
    total, begin, end = 0.0, None, None
    for e in events:
        t = e.get("time")
        if not isinstance(t, (int, float)):
            continue
        if e.get("kind") in ("start", "resume"):
            if begin is not None and end is not None:
                total += end - begin
            begin, end = t, t
        elif begin is not None:
            end = t
    if begin is not None and end is not None:
        total += end - begin
    return total if begin is not None else None


def mean_logged(events: list[dict], key: str, lo: int, hi: int) -> float | None:
    """Mean of a value the training steps logged (``key`` of the train records with lo < iteration <= hi); None
    when none logged it. NaN values (a step that kept no pseudo label) are left out."""
    values = [e[key] for e in events if e.get("kind") == "train" and lo < e.get("iteration", -1) <= hi
              and isinstance(e.get(key), (int, float)) and not math.isnan(e[key])]
    return sum(values) / len(values) if values else None


# The last share of a run's steps whose logged pseudo labels the study reports (what training ended on).
PSEUDO_LABEL_TAIL = 0.1


def pseudo_label_summary(events: list[dict], iterations: int) -> dict | None:
    """The pseudo labels a semi-supervised run ended on, from its metrics.jsonl: the share of unlabeled pixels kept
    (``mask_ratio``, or AdvSemiSeg's ``semi_ratio``) and, when logged (``log_pseudo_accuracy``), the share of them
    that were right (``pseudo_acc``), each the mean over the last 10% of the steps; None for a run that logged
    neither (supervised)."""
    lo = int(iterations * (1 - PSEUDO_LABEL_TAIL))
    kept = mean_logged(events, "mask_ratio", lo, iterations)
    if kept is None:
        kept = mean_logged(events, "semi_ratio", lo, iterations)
    right = mean_logged(events, "pseudo_acc", lo, iterations)
    return None if kept is None and right is None else {"kept": kept, "right": right}


def verdict(gains: list[float], baseline_spread: float | None) -> str:
    """The decision rule: an arm helps when its gain over the baseline on every seed (the smallest one) exceeds
    twice the baseline's seed-to-seed spread (max - min); "hurts" is the mirror image. Positive on every seed is
    implied."""
    if len(gains) < 2 or baseline_spread is None:
        return "needs 2+ seeds"
    if min(gains) > 2 * baseline_spread and min(gains) > 0:
        return "helps"
    if max(gains) < -2 * baseline_spread and max(gains) < 0:
        return "hurts"
    return "no clear effect"


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "min": None, "max": None, "spread": None, "std": None}
    return {"n": len(values), "mean": sum(values) / len(values), "min": min(values), "max": max(values),
            "spread": max(values) - min(values), "std": statistics.stdev(values) if len(values) >= 3 else None}


def _mean_class_iou(results: list[dict]) -> dict[str, float] | None:
    """Per-class IoU averaged over the given runs (classes in the first run's order); None without any."""
    ious = [r["iou"] for r in results if r.get("iou")]
    if not ious:
        return None
    return {c: sum(i[c] for i in ious) / len(ious) for c in ious[0] if all(c in i for i in ious)}


def summarize(results: list[dict], *, baseline: str, arms: list[str], labels: list[str], seeds: list[int]) -> list[dict]:
    """Rows of the table, one per (arm, label setting), from ``collect`` records (pure: no files).

    ``labels``: the label tags in table order (the full-label setting ``all`` last, if it was run).
    """
    by_cell: dict[tuple[str, str], dict[int, dict]] = {}
    for r in results:
        by_cell.setdefault((r["arm"], r["labels"]), {})[r["seed"]] = r
    full = {s: r["miou"] for s, r in by_cell.get((baseline, "all"), {}).items() if r.get("miou") is not None}
    full_mean = sum(full.values()) / len(full) if full else None
    rows = []
    for tag in labels:
        for arm in ([baseline] if tag == "all" else [baseline, *[a for a in arms if a != baseline]]):
            cell = by_cell.get((arm, tag), {})
            vals = {s: r["miou"] for s, r in cell.items() if r.get("miou") is not None}
            n_labeled = next((r["n_labeled"] for r in cell.values() if r.get("n_labeled") is not None), None)
            times = [r["train_seconds"] for r in cell.values() if r.get("train_seconds") is not None]
            row = {"arm": arm, "labels": tag, "n_labeled": n_labeled, "planned": len(seeds),
                   "seeds": sorted(vals), "miou": vals, **_stats(list(vals.values())),
                   "class_iou": _mean_class_iou([r for s, r in cell.items() if s in vals]),
                   "train_seconds_mean": sum(times) / len(times) if times else None,
                   "gains": None, "gain_mean": None, "gain_min": None, "gain_max": None, "share_of_gap": None,
                   "verdict": "ceiling" if tag == "all" else "baseline" if arm == baseline else None}
            if arm != baseline and tag != "all":
                base = {s: r["miou"] for s, r in by_cell.get((baseline, tag), {}).items() if r.get("miou") is not None}
                paired = sorted(set(vals) & set(base))
                gains = [vals[s] - base[s] for s in paired]
                base_stats = _stats(list(base.values()))
                row["gains"] = dict(zip(paired, gains))
                if gains:
                    row["gain_mean"] = sum(gains) / len(gains)
                    row["gain_min"], row["gain_max"] = min(gains), max(gains)
                    gap = None if full_mean is None else full_mean - sum(base[s] for s in paired) / len(paired)
                    row["share_of_gap"] = row["gain_mean"] / gap if gap is not None and gap > 0 else None
                row["baseline_spread"] = base_stats["spread"] if base_stats["n"] >= 2 else None
                row["verdict"] = verdict(gains, row["baseline_spread"]) if gains else "no paired runs yet"
            rows.append(row)
    return rows


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def markdown_table(rows: list[dict], *, eval_split: str, label_text: dict[str, str]) -> str:
    head = ("| method | labels | labeled images | seeds | mIoU mean | min-max | std | paired gain (min..max) "
            "| share of gap | verdict | train time / run |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        seeds = f"{r['n']}" if r["n"] == r["planned"] else f"{r['n']} of {r['planned']}"
        spread = "-" if r["n"] == 0 else f"{_pct(r['min'])}-{_pct(r['max'])}"
        if r["gain_mean"] is None:
            gain = "-"
        elif len(r["gains"]) > 1:
            gain = f"{_pct(r['gain_mean'], True)} ({_pct(r['gain_min'], True)}..{_pct(r['gain_max'], True)})"
        else:
            gain = _pct(r["gain_mean"], True)
        share = "-" if r["share_of_gap"] is None else f"{100 * r['share_of_gap']:.0f}%"
        lines.append(f"| {r['arm']} | {label_text.get(r['labels'], r['labels'])} | "
                     f"{'-' if r['n_labeled'] is None else r['n_labeled']} | {seeds} | "
                     f"{'**' + _pct(r['mean']) + '**' if r['n'] else '-'} | {spread} | {_pct(r['std'])} | {gain} | "
                     f"{share} | {r['verdict'] or '-'} | {format_duration(r['train_seconds_mean'])} |")
    lines += [
        "",
        f"mIoU in percent on the `{eval_split}` split with each run's last checkpoint (no checkpoint was chosen on it); "
        "min-max over seeds, std from 3 seeds on.",
        "Paired gain: the mean of per-seed differences to the baseline arm at the same labels, seed and split "
        "(min..max over seeds). Share of gap: that gain over (baseline with all labels - baseline), the ceiling's mean.",
        "Verdict: \"helps\" when the arm's gain on every seed (the smallest) exceeds twice the "
        "baseline's seed-to-seed spread (max - min); \"hurts\" the mirror image; otherwise \"no clear effect\".",
        "Train time: wall time of training from metrics.jsonl (mean per run), with the study's runs sharing the machine.",
    ]
    return "\n".join(lines)


def runs_table(results: list[dict]) -> str:
    """One line per run; with a column for the pseudo labels when a semi-supervised run logged them."""
    pseudo = any(r.get("pseudo_labels") for r in results)
    head = "| run | mIoU | iterations | labeled | threads | precision | train time |"
    if pseudo:
        head += " pseudo labels kept / right (last 10% of steps) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        miou = (_pct(r["miou"]) + (" (kept)" if r.get("kept") else "")) if r["done"] else "not done"
        line = (f"| {r['name']} | {miou} | {r['iteration'] or '-'} | "
                f"{r['n_labeled'] if r['n_labeled'] is not None else '-'} | {r['threads'] or '-'} | "
                f"{r.get('precision') or '-'} | {format_duration(r['train_seconds'])} |")
        if pseudo:
            p = r.get("pseudo_labels") or {}
            line += " - |" if not p else f" {format_share(p.get('kept'))} / {format_share(p.get('right'))} |"
        lines.append(line)
    return "\n".join(lines)


def format_share(x: float | None) -> str:
    """A share in [0, 1] as a whole percentage, "-" when there is none (nothing logged)."""
    return "-" if x is None else f"{100 * x:.0f}%"


def groups_table(results: list[dict], group_by: str) -> str:
    """Each finished run's mIoU per group of images (columns: the groups, then all images)."""
    groups = sorted({g for r in results if r["done"] for g in (r["groups"] or {})})
    lines = [f"mIoU per group of images (an image's group is its name up to the first `{group_by}`):", "",
             "| run | " + " | ".join(groups) + " | all |", "|---|" + "---|" * (len(groups) + 1)]
    for r in results:
        if r["done"]:
            lines.append(f"| {r['name']} | " + " | ".join(_pct(r["groups"].get(g)) for g in groups)
                         + f" | {_pct(r['miou'])} |")
    return "\n".join(lines)


def class_table(rows: list[dict], label_text: dict[str, str]) -> str:
    """Per-class IoU of each (method, labels) row of the table, averaged over its finished seeds."""
    rows = [r for r in rows if r.get("class_iou")]
    classes = list(dict.fromkeys(c for r in rows for c in r["class_iou"]))
    lines = ["IoU per class in percent, the mean over each row's finished seeds:", "",
             "| method | labels | seeds | mIoU | " + " | ".join(classes) + " |", "|---" * (len(classes) + 4) + "|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {label_text.get(r['labels'], r['labels'])} | {r['n']} | {_pct(r['mean'])} | "
                     + " | ".join(_pct(r["class_iou"].get(c)) for c in classes) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, *, title: str, eval_split: str, baseline: str) -> str:
    """Two panels: left, mIoU against the number of labeled images (log x), one line per arm, the ceiling dashed;
    right, every seed's runs paired: one line per (label setting, seed) through the arms, baseline first, so a gain
    that holds on every seed reads as lines that all rise. Raises ImportError without matplotlib."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.4), dpi=120)
    ax, paired = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    arms = list(dict.fromkeys(r["arm"] for r in rows if r["labels"] != "all"))
    for arm in arms:
        pts = sorted((r["n_labeled"], r) for r in rows if r["arm"] == arm and r["labels"] != "all"
                     and r["n"] and r["n_labeled"] is not None)
        if not pts:
            continue
        xs = [x for x, _ in pts]
        ys = [100 * r["mean"] for _, r in pts]
        err = [[100 * (r["mean"] - r["min"]) for _, r in pts], [100 * (r["max"] - r["mean"]) for _, r in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=arm)
    for r in rows:
        if r["labels"] == "all" and r["n"]:
            n = f" {r['n_labeled']}" if r["n_labeled"] is not None else ""
            for panel in (ax, paired):
                panel.axhline(100 * r["mean"], linestyle="--", color="gray", label=f"{baseline} with all{n} labels")
    ax.set_xscale("log")
    ticks = sorted({r["n_labeled"] for r in rows if r["labels"] != "all" and r["n"] and r["n_labeled"] is not None})
    if ticks:  # the label counts themselves, not powers of ten
        ax.minorticks_off()
        ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("labeled training images")
    ax.set_ylabel(f"mIoU on {eval_split} (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    _plot_paired(paired, rows, arms)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plot_paired(ax, rows: list[dict], arms: list[str]) -> None:
    """The right panel of ``plot``: per label setting and seed, that seed's mIoU in each arm that has it."""
    tags = list(dict.fromkeys(r["labels"] for r in rows if r["labels"] != "all"))
    for tag in tags:
        by_arm = {r["arm"]: r["miou"] for r in rows if r["labels"] == tag}
        seeds = sorted({s for vals in by_arm.values() for s in vals})
        n = next((r["n_labeled"] for r in rows if r["labels"] == tag and r["n_labeled"] is not None), tag)
        for seed in seeds:
            pts = [(i, 100 * by_arm[a][seed]) for i, a in enumerate(arms) if seed in by_arm.get(a, {})]
            if len(pts) < 2:  # nothing to pair with
                continue
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"{n} labeled, seed {seed}")
    ax.set_xticks(range(len(arms)), arms, rotation=15)
    ax.set_xlim(-0.4, len(arms) - 0.6)
    ax.set_ylabel("mIoU (%)")
    ax.set_title("each seed, paired")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


__all__ = ["format_duration", "train_seconds", "verdict", "summarize", "markdown_table", "runs_table", "groups_table",
           "class_table", "plot"]
