"""Training and transfer-evaluation speed at the paper's settings (prints figures).

HW-aware and regular 2-8-1 networks, 10,000 epochs x 4 batches (40,000 steps), reference
mapping; then 10,000 transfers on the 200-point test set. Published code: 5-8 min training,
about a minute per 10,000 transfers.
"""

import sys
import time
from pathlib import Path

# run as `python bench/training.py`: this file's folder must not shadow the `training` package
sys.path[0] = str(Path(__file__).resolve().parents[1])

from database.datasets import load_moons_all  # noqa: E402
from database.reference import import_reference  # noqa: E402
from training.evaluate import evaluate_transfers  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402


def main(epochs: int = 10_000) -> None:
    db = import_reference()
    data = load_moons_all()
    (x, y), (xt, yt) = data["train"], data["test"]
    rows = []
    for name, hw in (("hardware-aware", True), ("regular", False)):
        c0 = time.process_time()
        r = train(TrainConfig(epochs=epochs, hardware_aware=hw, mapping="reference"), x, y, db)
        cpu = time.process_time() - c0
        t0 = time.perf_counter()
        res = evaluate_transfers(r.model, xt, yt, 10_000, db, mapping="reference")
        rows.append((name, r.steps, r.seconds, cpu, time.perf_counter() - t0,
                     res.summary()["share_correct_95"]))
    # the machine is shared: process CPU time (incl. model set-up) is less disturbed than wall
    print(f"{'network':<16}{'steps':>8}{'train [s]':>11}{'cpu [s]':>9}{'us/step':>9}"
          f"{'eval 10k [s]':>14}{'>=95% share':>13}")
    for name, steps, tr, cpu, ev, share in rows:
        print(f"{name:<16}{steps:>8}{tr:>11.1f}{cpu:>9.1f}{tr / steps * 1e6:>9.0f}{ev:>14.3f}"
              f"{share:>13.1%}")
    print(f"HW-aware / regular training time: {rows[0][2] / rows[1][2]:.2f}x wall, "
          f"{rows[0][3] / rows[1][3]:.2f}x cpu (targets: < 60 s, <= 2x; eval < 1 s)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
