"""Draws results/radio-galaxy/cold.png from cold/results.csv: test NLL, accuracy and ECE of the
mean-field LeNet-5 against the posterior temperature T, without and with augmentation, one thin
line per seed and the mean over seeds.

    target/notebook-venv/bin/python results/radio-galaxy/cold_figure.py

(the virtual environment of .ci/notebooks: pandas and matplotlib from notebooks/requirements.txt)
"""
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

HERE = pathlib.Path(__file__).parent
rows = pd.read_csv(HERE / "cold" / "results.csv")
rows = rows[rows.test_accuracy.notna()]
rows["augmented"] = rows.method.str.endswith("-aug")
rows["T"] = rows.method.str.replace("-aug", "", regex=False).str.lstrip("t").astype(float)

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
for ax, (col, title) in zip(axes, [("test_nll", "test NLL"), ("test_accuracy", "test accuracy"),
                                   ("test_ece", "test ECE")]):
    for aug, color in [(False, "C0"), (True, "C3")]:
        r = rows[rows.augmented == aug]
        for _, s in r.groupby("seed"):
            s = s.sort_values("T")
            ax.plot(s["T"], s[col], color=color, lw=0.8, alpha=0.4)
        m = r.groupby("T")[col].mean()
        ax.plot(m.index, m.values, "o-", color=color, lw=2,
                label="with augmentation" if aug else "without augmentation")
    ax.axvline(1.0, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("posterior temperature T (KL weighted by T; T < 1 cold)")
    ax.set_title(title)
axes[0].legend()
fig.suptitle("Cold posteriors: mean-field LeNet-5 on the Fashion-MNIST subset (thin: one seed; thick: mean)")
plt.tight_layout()
plt.savefig(HERE / "cold.png", dpi=100)
print(HERE / "cold.png")
