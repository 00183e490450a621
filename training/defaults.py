"""The one home of training's names and defaults: networks, mappings, per-dataset settings.

Plain Python (no torch, no numpy), so the CLI, the sweep file parser and the demo read the same
values on a lab PC without the [train] extra. docs/training.md explains each choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.errors import TrainingError

#: the two networks every comparison trains, by their names in files and tables
NETWORKS = ("hardware_aware", "regular")
#: how people read those names (terminal, figures, reports)
LABELS = {"hardware_aware": "hardware-aware", "regular": "regular"}


#: the published claim (Drolet et al.): share of the 200 half-moons test points classified
#: correctly in at least 95 % of transfers, per network
PAPER_SHARE_CORRECT_95 = {"hardware_aware": 0.795, "regular": 0.185}


def network_name(hardware_aware: bool) -> str:
    return NETWORKS[0] if hardware_aware else NETWORKS[1]


#: weight-to-conductance mappings (training.mapping)
MAPPINGS = ("physical", "reference")
#: the default everywhere (training, evaluation, CLI, sweeps, demo): the only mapping a crossbar
#: can be programmed with, and the paper's description; "reference" reproduces the published
#: code's numbers and is asked for by name (`xbarlab reproduce` does)
DEFAULT_MAPPING = "physical"


@dataclass(frozen=True)
class DatasetDefaults:
    """A dataset's network and optimiser when the user does not say otherwise."""

    inputs: int
    outputs: int  # 1: binary (BCE with logits), else classes (cross-entropy)
    hidden: tuple[int, ...]
    activation: str
    epochs: int
    lr: float
    batch_size: int = 256

    def sizes(self, hidden: tuple[int, ...] | list[int] | None = None) -> tuple[int, ...]:
        """Layer sizes of the network, with `hidden` widths instead of the default ones."""
        return (self.inputs, *(self.hidden if hidden is None else tuple(hidden)), self.outputs)


#: moons: the paper's 2-8-1 sigmoid network, Adam lr 0.1, 10,000 epochs; digits: a 64-32-10
#: ReLU network at lr 0.01 for 300 epochs (the paper's lr 0.1 is too high for it)
DATASETS: dict[str, DatasetDefaults] = {
    "moons": DatasetDefaults(inputs=2, outputs=1, hidden=(8,), activation="sigmoid",
                             epochs=10_000, lr=0.1),
    "digits": DatasetDefaults(inputs=64, outputs=10, hidden=(32,), activation="relu",
                              epochs=300, lr=0.01),
}


def dataset_defaults(name: str) -> DatasetDefaults:
    try:
        return DATASETS[name]
    except KeyError:
        raise TrainingError(f"unknown dataset {name!r}; choose {' or '.join(DATASETS)}") from None
