"""Print the README's metrics table from `pyae train` run folders.

    python docs/metrics_table.py runs/ae-2 runs/ae-10 runs/ae-32 runs/vae-2 runs/vae-10 runs/vae-32
"""
import json
import sys
from pathlib import Path

SAMPLERS = ("uniform", "normal", "gaussian", "gmm")
PRESET_LATENT = {"fashion_mnist": 2, "cartoon": 200}


def row(run_dir):
    run = Path(run_dir)
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    holes = [f"{metrics['samplers'][name]['hole_rate']:.2f} ({metrics['samplers'][name]['precision']:.2f})"
             for name in SAMPLERS]
    rec, rep = metrics["reconstruction"], metrics["representation"]
    model = config["model"]
    latent_dim = model.get("latent_dim") or PRESET_LATENT[model["preset"]]
    return (f"| {model['objective']} | {latent_dim} "
            f"| {rec['mse']:.4f} | {rec['psnr']:.1f} | {rep['linear_probe_accuracy']:.2f} "
            f"| {rep['knn_accuracy']:.2f} | {rep['nmi']:.2f} | " + " | ".join(holes) + " |")


def main(run_dirs):
    print("| objective | latent | test MSE | PSNR dB | linear probe | kNN acc | NMI "
          "| uniform | N(0, I) | Gaussian | GMM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run_dir in run_dirs:
        print(row(run_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
