"""`cifarkit report SWEEP_DIR`: per-variant statistics, paired tests against the first variant, the paired effect
of each varied setting where the sweep varies more than one, and plots.

It reads the run folders (results.json, metrics.jsonl) that the sweep wrote, so it needs no database and
works on a sweep still running: cells not finished yet are counted as missing.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from cifarkit.errors import CifarkitError
from cifarkit.experiments.sweep import MAX_CELLS, MAX_SEEDS
from cifarkit.files import atomic_write_text, json_text, read_json
from cifarkit.runlog import read_metrics
from cifarkit.stats import describe, paired_tests
from cifarkit.text import csv_text

# (key in the report, where it is in results.json, label)
FIGURES = (("test_top1", ("test", "top1"), "test top-1"), ("test_loss", ("test", "loss"), "test loss"),
           ("val_top1", ("val", "top1"), "val top-1"), ("val_loss", ("val", "loss"), "val loss"))


def _figure(results: dict | None, where: tuple[str, str]) -> float | None:
    part = (results or {}).get(where[0])
    return None if not part else part.get(where[1])


MAX_RECORD_BYTES = 16 << 20
# a variant's folder name as the sweep writes it (spec.grid): never a path that leaves the sweep folder
VARIANT_NAME = re.compile(r"v[0-9]+-[A-Za-z0-9._=+,-]{1,200}")


def _untrusted_record(record, record_file: Path) -> dict:
    """sweep.json, schema-checked: everything in a sweep folder is data that anyone could have edited."""
    def bad(why: str) -> CifarkitError:
        return CifarkitError(f"{record_file} is not a sweep record cifarkit wrote ({why}); it is not used")

    if not isinstance(record, dict):
        raise bad("not a JSON object")
    for key, kind in (("name", str), ("recipe", str), ("variants", list), ("seeds", list), ("set", list)):
        if not isinstance(record.get(key), kind):
            raise bad(f"{key!r} should be a {kind.__name__}")
    if not 1 <= len(record["seeds"]) <= MAX_SEEDS or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in record["seeds"]):
        raise bad(f"'seeds' should be 1 to {MAX_SEEDS} seed numbers")
    if not 1 <= len(record["variants"]) <= MAX_CELLS:
        raise bad("too many or no variants")
    for v in record["variants"]:
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not VARIANT_NAME.fullmatch(v["name"]):
            raise bad(f"a variant name is not one the sweep writes: {str(v)[:80]!r}")
        if not isinstance(v.get("overrides"), list) or not all(isinstance(o, str) for o in v["overrides"]):
            raise bad(f"variant {v['name']}: 'overrides' should be a list of strings")
    if not all(isinstance(x, str) for x in record["set"]):
        raise bad("'set' should be a list of strings")
    return record


def _inside(folder: Path, path: Path) -> bool:
    """`path` is in `folder` once every link is followed (a link to /etc/passwd, or a folder link out, is not)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a link loop
        return False


def _untrusted_results(path: Path, folder: Path, warn) -> dict | None:
    """A cell's results.json as figures, or None (missing, outside the folder, malformed: warned)."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not _inside(folder, path):
        warn(f"warning: {path} is a link or lies outside the sweep folder; not read")
        return None
    try:
        results = read_json(path, MAX_RECORD_BYTES, CifarkitError, "results file")
    except CifarkitError as e:
        warn(f"warning: {e}; that cell counts as missing")
        return None
    if not isinstance(results, dict):
        warn(f"warning: {path} is not a results object; that cell counts as missing")
        return None
    clean = {}
    for split in ("val", "test"):
        part = results.get(split)
        if part is None:
            clean[split] = None
        elif isinstance(part, dict) and (why := _figures_problem(part)) is None:
            clean[split] = {k: float(part[k]) for k in ("top1", "loss")}
        else:
            why = why if isinstance(part, dict) else "not an object"
            warn(f"warning: {path}: its {split!r} figures are not what a run writes ({why}); that trial is left out")
            return None
    return clean


def _figures_problem(part: dict) -> str | None:
    """Why a split's figures cannot be a run's: top-1 is a fraction in [0, 1], the loss a finite number >= 0
    (an edited or broken file could hold 1e308, -1, 2, NaN or a 400-digit integer)."""
    for key, low, high in (("top1", 0.0, 1.0), ("loss", 0.0, 1e6)):
        value = part.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{key} is not a number"
        try:
            number = float(value)
        except OverflowError:
            return f"{key} is out of range"
        if not (math.isfinite(number) and low <= number <= high):
            return f"{key} {number:g} is outside [{low:g}, {high:g}]"
    return None


def read_sweep(folder: Path, warn=print) -> tuple[dict, list[dict]]:
    """The sweep's record and, per variant, its name, overrides and every seed's results (None if not done) and
    metrics lines (read once: every plot draws from them). Every file is untrusted: schema-checked, read only
    inside the folder and only through the bounded reader."""
    folder = Path(folder)
    record_file = folder / "sweep.json"
    if not record_file.is_file():
        raise CifarkitError(f"{folder} is not a sweep folder (no sweep.json); give the folder that `cifarkit sweep` "
                            "printed")
    if record_file.is_symlink() or not _inside(folder, record_file):
        raise CifarkitError(f"{record_file} is a link; a sweep record is read only as a file in the folder")
    record = _untrusted_record(read_json(record_file, MAX_RECORD_BYTES, CifarkitError, "sweep record"), record_file)
    variants = []
    for v in record["variants"]:
        runs = []
        for seed in record["seeds"]:
            run_dir = folder / "trials" / v["name"] / f"seed{seed}"
            metrics_file = run_dir / "metrics.jsonl"
            metrics = []
            if metrics_file.is_file() and not metrics_file.is_symlink() and _inside(folder, metrics_file):
                try:
                    metrics = read_metrics(run_dir, warn)
                except CifarkitError as e:
                    warn(f"warning: {e}; its curves are left out")
            runs.append({"seed": seed, "run_dir": run_dir,
                         "results": _untrusted_results(run_dir / "results.json", folder, warn), "metrics": metrics})
        variants.append({**v, "runs": runs})
    return record, variants


def summarize(variants: list[dict]) -> list[dict]:
    """Per variant: each figure's description, and its paired tests against the first variant."""
    reference = variants[0]
    rows = []
    for v in variants:
        row = {"variant": v["name"], "overrides": v["overrides"], "seeds": [r["seed"] for r in v["runs"]],
               "done": sum(r["results"] is not None for r in v["runs"])}
        for key, where, _ in FIGURES:
            values = [_figure(r["results"], where) for r in v["runs"]]
            row[key] = {**describe(values), "values": values}
            if v is not reference:
                ref_values = [_figure(r["results"], where) for r in reference["runs"]]
                row[key]["vs_first"] = paired_tests(ref_values, values)
        rows.append(row)
    return rows


def _override_values(overrides: list[str]) -> dict[str, str]:
    """["model.kwargs.batchnorm=true", ...] as {"model.kwargs.batchnorm": "true", ...} (values as written)."""
    return dict(o.split("=", 1) for o in overrides if "=" in o)


# The figures whose factor effects are reported: test top-1 (the claim) and validation top-1 (what choices use).
EFFECT_FIGURES = ("test_top1", "val_top1")


def factor_effects(rows: list[dict]) -> list[dict]:
    """Where a sweep varies several settings (a grid): the paired effect of changing one setting with the others
    held fixed. For each varied key, variants are grouped by their other settings; in each group the variant with
    the key's first value is the reference and every other value is tested against it on the paired seeds (e.g.
    batchnorm false -> true, per activation). One varied setting: the comparison against the first variant
    already is its effect, so there is nothing more to add."""
    settings = [_override_values(r["overrides"]) for r in rows]
    keys = [k for k in dict.fromkeys(k for s in settings for k in s) if len({s.get(k) for s in settings}) > 1]
    if len(keys) < 2:
        return []
    effects = []
    for key in keys:
        values = list(dict.fromkeys(s.get(key) for s in settings))
        groups: dict[tuple, dict[str, dict]] = {}
        for row, s in zip(rows, settings, strict=True):
            others = tuple((k, s.get(k)) for k in keys if k != key)
            groups.setdefault(others, {})[s.get(key)] = row
        for others, by_value in groups.items():
            reference = by_value.get(values[0])
            if reference is None:
                continue
            for value in values[1:]:
                row = by_value.get(value)
                if row is None:
                    continue
                effects.append({
                    "setting": key, "from": values[0], "to": value,
                    "at": {k: v for k, v in others}, "reference": reference["variant"], "variant": row["variant"],
                    **{fig: paired_tests(reference[fig]["values"], row[fig]["values"]) for fig in EFFECT_FIGURES}})
    return effects


def effects_table(effects: list[dict]) -> str:
    if not effects:
        return ""
    lines = ["Effect of each setting with the others held fixed (paired seeds; Δ in points of top-1):", "",
             "| setting | change | with | pairs | Δ test top-1 | Wilcoxon p | paired t p | Δ val top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for e in effects:
        test, val = e["test_top1"], e["val_top1"]
        at = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in e["at"].items())
        lines.append(f"| {e['setting'].split('.')[-1]} | {e['from']} → {e['to']} | {at} | {test['pairs']} "
                     f"| {_points(test['mean_difference'])} | {_p(test['wilcoxon_p'])} | {_p(test['t_p'])} "
                     f"| {_points(val['mean_difference'])} |")
    return "\n".join(lines) + "\n"


LAYER_KEY = re.compile(r"activations/layer([0-9]+)")


def activation_profiles(variants: list[dict]) -> list[dict]:
    """Per variant, the median unit activation of each layer at each finished seed's last evaluation (the ELU
    paper's Figure 2a measurement, per layer), and its mean over those seeds. Empty where nothing logged it."""
    profiles = []
    for v in variants:
        per_seed = []
        for run in v["runs"]:
            last = next((row for row in reversed(run["metrics"]) if "activations/median_unit" in row), None)
            if run["results"] is None or last is None:
                continue
            layers = {int(m.group(1)): value for key, value in last.items()
                      if (m := LAYER_KEY.fullmatch(key)) and isinstance(value, (int, float))
                      and not isinstance(value, bool)}
            if layers:
                per_seed.append([layers[i] for i in sorted(layers)])
        if per_seed and len({len(p) for p in per_seed}) == 1:
            profiles.append({"variant": v["name"], "seeds": len(per_seed),
                             "median_unit_per_layer": np.mean(per_seed, axis=0).tolist()})
    return profiles


def profiles_table(profiles: list[dict]) -> str:
    if not profiles:
        return ""
    layers = max(len(p["median_unit_per_layer"]) for p in profiles)
    lines = ["Median unit activation per activation layer at the last evaluation (mean over finished seeds):", "",
             "| variant | seeds | " + " | ".join(f"L{i}" for i in range(1, layers + 1)) + " |",
             "|---|---|" + "---|" * layers]
    for p in profiles:
        cells = [f"{x:+.3f}" for x in p["median_unit_per_layer"]] + ["-"] * (layers - len(p["median_unit_per_layer"]))
        lines.append(f"| {p['variant']} | {p['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def profile_plot(profiles: list[dict], path: Path) -> Path | None:
    """The per-layer median unit activation, one line per variant."""
    if not profiles:
        return None
    from cifarkit.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for p in profiles:
        values = p["median_unit_per_layer"]
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{p['variant']} (n={p['seeds']})")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("activation layer")
    ax.set_ylabel("median over units of the unit's mean activation")
    ax.set_title("median unit activation per layer, last evaluation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, path)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _points(difference: float | None) -> str:
    """A difference of two fractions in signed percentage points: +1.25."""
    return "-" if difference is None else f"{100 * difference:+.2f}"


def _p(x: float | None) -> str:
    return "-" if x is None else (f"{x:.2g}" if x >= 1e-3 else f"{x:.1e}")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| variant | n | test top-1 % (mean ± std) | 95% interval | val top-1 % | test loss | "
             "Δ test vs first | Wilcoxon p | paired t p |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        t, v, loss = row["test_top1"], row["val_top1"], row["test_loss"]
        vs = t.get("vs_first", {})
        interval = "-" if t["ci95"] is None else f"[{_pct(t['ci95'][0])}, {_pct(t['ci95'][1])}]"
        std = "" if t["std"] is None else f" ± {_pct(t['std'])}"
        vstd = "" if v["std"] is None else f" ± {_pct(v['std'])}"
        diff = "(reference)" if not vs else _points(vs["mean_difference"])
        loss_text = "-" if loss["mean"] is None else f"{loss['mean']:.4f}"
        lines.append(f"| {row['variant']} | {t['n']} | {_pct(t['mean'])}{std} | {interval} | {_pct(v['mean'])}{vstd} "
                     f"| {loss_text} | {diff} | {_p(vs.get('wilcoxon_p'))} | {_p(vs.get('t_p'))} |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict]) -> str:
    header = ["variant", "overrides"]
    for key, _, _ in FIGURES:
        header += [f"{key}_n", f"{key}_mean", f"{key}_std", f"{key}_ci95_low", f"{key}_ci95_high",
                   f"{key}_diff_vs_first", f"{key}_wilcoxon_p", f"{key}_t_p"]
    lines = [header]
    for row in rows:
        line = [row["variant"], "; ".join(row["overrides"])]
        for key, _, _ in FIGURES:
            d = row[key]
            ci = d["ci95"] or [None, None]
            vs = d.get("vs_first", {})
            line += [d["n"], d["mean"], d["std"], ci[0], ci[1], vs.get("mean_difference"), vs.get("wilcoxon_p"),
                     vs.get("t_p")]
        lines.append(line)
    return csv_text(lines)


def _mean_band(curves: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps common to every curve, and the mean and standard deviation there."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    values = np.array([[c[s] for s in steps] for c in curves], dtype=np.float64)
    if not steps:
        return np.array([]), np.array([]), np.array([])
    std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(steps))
    return np.asarray(steps), values.mean(axis=0), std


def _curve(metrics: list[dict], key: str, transform=lambda x: x) -> dict[int, float]:
    return {row["step"]: transform(row[key]) for row in metrics if row.get(key) is not None}


CURVES = (("train/loss", "training loss", lambda x: x), ("val/top1", "validation error", lambda x: 1 - x))
# The ELU paper's Figure 2a: the median over units of each unit's mean activation (train.log_activations).
ACTIVATION_CURVES = (("activations/median_unit", "median unit mean activation", lambda x: x),)


def learning_curves(variants: list[dict], path: Path, curves=CURVES) -> Path | None:
    """Per variant, the mean over finished seeds with a ±std band: training loss and validation error (or
    other `curves`: (metric key, title, transform))."""
    from cifarkit.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    drawn = False
    for ax, (key, title, transform) in zip(axes[0], curves, strict=True):
        for v in variants:
            per_seed = [c for r in v["runs"] if r["results"] is not None
                        for c in [_curve(r["metrics"], key, transform)] if c]
            steps, mean, std = _mean_band(per_seed)
            if len(steps):
                line, = ax.plot(steps, mean, label=f"{v['name']} (n={len(per_seed)})")
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
                drawn = True
        ax.set_title(f"{title} (mean ± std over seeds)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    # one legend, outside the axes: every panel draws the same variants, and eight lines' labels would hide them
    axes[0][-1].legend(*next(h for ax in axes[0] if (h := ax.get_legend_handles_labels())[0]), fontsize=7,
                       loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, path)


def final_points(rows: list[dict], path: Path) -> Path | None:
    """Each seed's final test top-1 as a point per variant, with the mean as a bar."""
    from cifarkit.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(rows) + 2), 4))
    drawn = False
    for i, row in enumerate(rows):
        values = [100 * x for x in row["test_top1"]["values"] if x is not None]
        if values:
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(np.full(len(values), i) + jitter, values, s=18, zorder=3)
            ax.hlines(np.mean(values), i - 0.3, i + 0.3, color="black", zorder=4)
            drawn = True
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("final test accuracy per seed (line: mean)")
    ax.grid(alpha=0.3, axis="y")
    if not drawn:
        plt.close(fig)
        return None
    return save_figure(fig, path)


def report_sweep(folder: Path) -> dict:
    """Write report/summary.{md,csv,json} and the plots into the sweep folder; returns the summary and paths."""
    folder = Path(folder)
    record, variants = read_sweep(folder)
    rows = summarize(variants)
    effects = factor_effects(rows)
    profiles = activation_profiles(variants)
    out = folder / "report"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise CifarkitError(f"{out} is a link or a file; the report is written only into a folder inside the sweep "
                            "folder: remove it and run report again")
    out.mkdir(exist_ok=True)
    header = (f"Sweep {record['name']}: recipe {record['recipe']}, seeds {record['seeds']}"
              + (f", settings {', '.join(record['set'])}" if record["set"] else "") + "\n\n")
    files = {"markdown": out / "summary.md", "csv": out / "summary.csv", "json": out / "summary.json"}
    markdown = "\n".join(part for part in (header + markdown_table(rows), effects_table(effects),
                                            profiles_table(profiles)) if part)
    atomic_write_text(files["markdown"], markdown)
    atomic_write_text(files["csv"], csv_table(rows))
    summary = {"sweep": record, "variants": rows, "factor_effects": effects, "activation_profiles": profiles}
    atomic_write_text(files["json"], json_text(summary) + "\n")
    for name, plot in (("curves", learning_curves(variants, out / "curves.png")),
                       ("finals", final_points(rows, out / "finals.png")),
                       ("activations", learning_curves(variants, out / "activations.png", ACTIVATION_CURVES)),
                       ("activation_layers", profile_plot(profiles, out / "activation-layers.png"))):
        if plot is not None:
            files[name] = plot
    return {"rows": rows, "effects": effects, "profiles": profiles, "markdown": markdown, "files": files}
