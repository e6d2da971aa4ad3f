"""Exports `iris`, a model of task `tensor` (served only over the Open Inference Protocol): the species of an iris
flower from its four measurements, a small MLP trained here on scikit-learn's bundled copy of Fisher's iris data.

forward(measurements [N, 4] float32, in cm) -> (probabilities [N, 3] float32, species [N] int64).
Every fifth flower is held out; the export refuses a model below MIN_ACCURACY on them, and an ONNX graph
(model.onnx) that answers any of the 150 flowers otherwise than TorchScript.
"""

import sys
from pathlib import Path

import torch
from sklearn.datasets import load_iris
from torch import nn

import formats
from common import publish_version

MIN_ACCURACY = 0.9
SEED = 0
STEPS = 500


class IrisNet(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        # Standardisation travels inside the model, so clients send plain centimetres.
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.layers = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def logits(self, measurements: torch.Tensor) -> torch.Tensor:
        return self.layers((measurements - self.mean) / self.std)

    def forward(self, measurements: torch.Tensor):
        probabilities = torch.softmax(self.logits(measurements), dim=-1)
        return probabilities, probabilities.argmax(dim=-1)


def main(root: Path) -> None:
    iris = load_iris()
    features = torch.tensor(iris.data, dtype=torch.float32)
    species = torch.tensor(iris.target, dtype=torch.int64)
    held_out = torch.arange(len(species)) % 5 == 0
    train_x, train_y = features[~held_out], species[~held_out]
    test_x, test_y = features[held_out], species[held_out]

    torch.manual_seed(SEED)
    model = IrisNet(train_x.mean(0), train_x.std(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model.logits(train_x), train_y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x)[1] == test_y).float().mean().item()
    if accuracy < MIN_ACCURACY:
        sys.exit(f"iris: held-out accuracy {accuracy:.3f} is below {MIN_ACCURACY}")
    scripted = torch.jit.script(model)

    def write(directory: Path) -> dict:
        scripted.save(str(directory / "model.pt"))
        seconds = formats.export_onnx(model, (test_x[:2],), directory / "model.onnx", ["measurements"],
                                      ["probabilities", "species"], [{0: formats.BATCH}])
        session = formats.onnx_session(directory / "model.onnx")
        with torch.no_grad():
            want, got = scripted(features), formats.run_onnx(session, features)
        if not torch.equal(want[1], got[1]) or formats.max_abs_difference(want[0], got[0]) > 1e-5:
            sys.exit("iris: model.onnx answers some flowers otherwise than TorchScript: not exported")
        print(f"model.onnx: the species of all {len(features)} flowers equal TorchScript's")
        return {
            "formats": {"onnx": {"flowers": len(features), "species_equal": True,
                                 "max_probability_difference": formats.max_abs_difference(want[0], got[0]),
                                 "export_seconds": round(seconds, 1)}},
            "model": "iris",
            "task": "tensor",
            "source": "scikit-learn load_iris() (Fisher's iris data, bundled in the scikit-learn wheel)",
            "train_flowers": int(len(train_y)),
            "held_out_flowers": int(len(test_y)),
            "held_out_accuracy": round(accuracy, 4),
            "final_train_loss": round(loss.item(), 4),
            "species": list(iris.target_names),
        }

    publish_version(root, "iris", 1, write)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
