"""PNG plots of the application benchmarks, shaped like the paper's figures."""

from __future__ import annotations

from pathlib import Path

COLORS = {
    "parrot": "#d62728",
    "baseline": "#7f7f7f",
    "baseline+apc": "#1f77b4",
    "baseline-latcap": "#9467bd",
    "vllm": "#2ca02c",
}


def draw(results: dict, out_dir: Path) -> list[Path]:
    """One grouped bar chart per workload (headline metric per case and system), plus the
    shared-prompt latency-vs-rate curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loadtest.bench_apps import headline

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    by_workload: dict[str, dict[str, dict]] = {}
    for key, row in results.items():
        workload, case = key.split("|", 1)
        if _is_rate_sweep(key):
            continue  # drawn as latency-vs-rate curves below, not as bars
        by_workload.setdefault(workload, {})[case] = row
    for workload, rows in by_workload.items():
        names = [n for n in COLORS if any(n in r for r in rows.values())]
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows)), 3.4))
        width = 0.8 / max(1, len(names))
        for j, name in enumerate(names):
            xs, ys = [], []
            for i, row in enumerate(rows.values()):
                if name in row:
                    xs.append(i + j * width)
                    ys.append(headline(workload, row[name]))
            ax.bar(xs, ys, width, label=name, color=COLORS[name])
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(rows))])
        ax.set_xticklabels(list(rows), rotation=15, fontsize=7)
        unit = "chat s/token" if workload == "mixed" else "seconds"
        ax.set_ylabel(unit)
        ax.set_title(f"{workload} (lower is better)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"apps_{workload}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    paths += _mixed_map_reduce(results, out_dir, plt)
    curves = {k: r for k, r in results.items() if _is_rate_sweep(k)}
    for key, row in curves.items():
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for name, res in row.items():
            pts = sorted((float(r), v) for r, v in res["normalized_latency"].items())
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                label=name,
                color=COLORS.get(name),
            )
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel("normalized latency (s/token)")
        bound = min(
            (r["bound_s_per_token"] for r in row.values() if "bound_s_per_token" in r),
            default=None,
        )
        if bound is not None:
            ax.axhline(bound, color="black", linestyle=":", linewidth=1, label="bound")
        ax.set_xscale("log", base=2)
        lengths = next(
            (r["app_prompt_tokens"] for r in row.values() if "app_prompt_tokens" in r), []
        )
        tokens = f" ({min(lengths)}-{max(lengths)} tokens)" if lengths else ""
        ax.set_title(f"GPTs-like: 4 apps behind shared system prompts{tokens}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        long = "_long" if "apps long" in key else ""
        path = out_dir / f"apps_shared_prompt_rates{long}_{key.rsplit('=', 1)[-1]}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _is_rate_sweep(key: str) -> bool:
    return key.startswith("shared_prompt|4 apps")


def _mixed_map_reduce(results: dict, out_dir: Path, plt) -> list[Path]:
    """The mixed workload's other half: the map-reduce apps' completion time next to chat."""
    rows = {k.split("|", 2)[2]: r for k, r in results.items() if k.startswith("mixed|")}
    if not rows:
        return []
    names = [n for n in COLORS if any(n in r for r in rows.values())]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs = [i + j * width for i, r in enumerate(rows.values()) if name in r]
        ys = [r[name]["map_reduce_s"] for r in rows.values() if name in r]
        ax.bar(xs, ys, width, label=name, color=COLORS[name])
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels(list(rows), fontsize=7)
    ax.set_ylabel("seconds")
    ax.set_title("mixed: map-reduce completion (lower is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "apps_mixed_map_reduce.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
