"""Scaling figures of issue 8, side by side in one run (prints a table).

1. Half-moons, hardware-aware, the paper's settings (2-8-1, 10,000 epochs = 40,000 steps,
   reference mapping): one network, then 32 networks trained as one batched model.
   Target: 32 batched in under 60 s on the 2-core machine (published code: 5-8 min for one).
2. 10,000-transfer evaluation of the 32 networks on the 200-point test set.
3. Digits (64-32-10 ReLU, physical mapping, 8 x 8 tiles, 300 epochs): hardware-aware and
   regular training, each followed by a 1,000-transfer evaluation on the 449 test images.

Wall-clock times; the machine may be shared, so the CPU time of this process is printed too.
Usage: python bench/scale.py [EPOCHS_MOONS]
"""

import sys
import time
from pathlib import Path

# run as `python bench/scale.py`: this file's folder must not shadow the `training` package
sys.path[0] = str(Path(__file__).resolve().parents[1])

from database.datasets import load_dataset, load_moons_all  # noqa: E402
from database.reference import import_reference  # noqa: E402
from training.evaluate import evaluate_transfers  # noqa: E402
from training.train import TrainConfig, train, train_config  # noqa: E402


class Clock:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w
        self.cpu = time.process_time() - self.c


def main(epochs: int = 10_000) -> None:
    db = import_reference()
    rows: list[tuple[str, str, float, float, str]] = []
    moons = load_moons_all()
    (x, y), (xt, yt) = moons["train"], moons["test"]
    models = {}
    for k in (1, 32):
        with Clock() as c:
            r = train(TrainConfig(epochs=epochs, k=k, mapping="reference"), x, y, db)
        models[k] = r.model
        rows.append((f"moons: train {k} HW-aware network{'s' * (k > 1)}", f"{r.steps} steps",
                     c.wall, c.cpu, f"{c.wall / r.steps * 1e6:.0f} us/step"))
    with Clock() as c:
        ev = evaluate_transfers(models[32], xt, yt, 10_000, db, mapping="reference")
    shares = [ev.summary(j)["share_correct_95"] for j in range(32)]
    rows.append(("moons: evaluate 32 networks", "10,000 transfers", c.wall, c.cpu,
                 f">=95 %: {min(shares):.1%}..{max(shares):.1%} (mean "
                 f"{sum(shares) / 32:.1%})"))

    digits = load_dataset("digits")
    (dx, dy), (dxt, dyt) = digits["train"], digits["test"]
    for hw in (True, False):
        cfg = train_config("digits", hardware_aware=hw)
        name = "HW-aware" if hw else "regular"
        with Clock() as c:
            r = train(cfg, dx, dy, db)
        rows.append((f"digits: train {name} 64-32-10", f"{r.steps} steps", c.wall, c.cpu,
                     f"{c.wall / r.steps * 1e6:.0f} us/step"))
        with Clock() as c:
            ev = evaluate_transfers(r.model, dxt, dyt, 1000, db, mapping=cfg.mapping)
        s = ev.summary()
        rows.append((f"digits: evaluate {name}", "1,000 transfers", c.wall, c.cpu,
                     f"clean {s['clean_acc']:.3f}, >=95 %: {s['share_correct_95']:.1%}, "
                     f"mean {s['transfer_acc_mean']:.3f}"))

    print(f"{'task':<38}{'size':>18}{'wall [s]':>10}{'cpu [s]':>9}  notes")
    for task, size, wall, cpu, note in rows:
        print(f"{task:<38}{size:>18}{wall:>10.2f}{cpu:>9.2f}  {note}")
    t1, t32 = rows[0][2], rows[1][2]
    print(f"32 batched / 1 network: {t32 / t1:.2f}x the time for 32x the networks "
          f"(target: 32 batched < 60 s at {epochs} epochs)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
