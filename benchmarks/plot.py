"""docs/bench_scaling.png: time and peak memory against batch size and number of steps."""

from __future__ import annotations


def scaling_plot(scaling: dict, path: str) -> str | None:
    """Write the four-panel scaling figure; returns the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(1, 4, figsize=(16, 3.8))
    libs = sorted({r["library"] for r in scaling["batch"]})
    for lib in libs:
        rows = [r for r in scaling["batch"] if r["library"] == lib]
        ax[0].loglog([r["batch"] for r in rows], [r["ms"] for r in rows], "o-", label=lib)
        mem = [r for r in rows if r["peak_mib"] is not None]
        if mem:
            ax[1].loglog([r["batch"] for r in mem], [r["peak_mib"] for r in mem], "o-",
                         label=f"{lib} peak")
            ax[1].loglog([r["batch"] for r in mem], [r["array_mib"] for r in mem], "k:",
                         label="one array")
        rows = [r for r in scaling["steps"] if r["library"] == lib and not r["trajectory"]]
        ax[2].plot([r["steps"] for r in rows], [r["ms"] for r in rows], "o-", label=lib)
        for traj, style in ((False, "o-"), (True, "s--")):
            mem = [r for r in scaling["steps"] if r["library"] == lib and r["trajectory"] == traj
                   and r["peak_mib"] is not None]
            if mem:
                ax[3].plot([r["steps"] for r in mem], [r["peak_mib"] for r in mem], style,
                           label=f"{lib}{' + trajectory' if traj else ''}")
    ax[0].set(title="guided DDIM step vs batch", xlabel="batch B of (B,4,64,64)", ylabel="ms")
    ax[1].set(title="peak memory vs batch", xlabel="batch", ylabel="MiB")
    ax[2].set(title="CFG DDIM loop vs steps", xlabel="steps", ylabel="ms")
    ax[3].set(title="peak memory vs steps", xlabel="steps", ylabel="MiB")
    from matplotlib.ticker import FuncFormatter

    for a in ax[:2]:
        a.set_xscale("log", base=2)
        a.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
