"""Drives ember's Open Inference Protocol routes with NVIDIA's official Python client, tritonclient[http],
as a user of Triton or KServe would: JSON and binary tensor data, every kind of default model, the errors,
and the model repository extension. Run by tests/kserve.rs against a live server:

    python tests/kserve/client_check.py HOST:PORT ADMIN_TOKEN MODELS_DIR

Exits non-zero (an AssertionError with what differed) on the first check that fails.
"""

import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from preprocess import preprocessed
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

URL, TOKEN, MODELS = sys.argv[1], sys.argv[2], Path(sys.argv[3])
PHOTOS = Path(__file__).resolve().parents[1] / "data" / "images"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}

client = httpclient.InferenceServerClient(url=URL, concurrency=4)


def infer(model, arrays, names, datatypes, binary, outputs=None):
    inputs = []
    for name, array, datatype in zip(names, arrays, datatypes):
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    requested = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs] if outputs else None
    return client.infer(model, inputs, outputs=requested, request_id="check-1")


def expect_error(status, fragment, call):
    try:
        call()
    except InferenceServerException as e:
        assert str(status) in str(e.status()) and fragment in e.message(), (status, fragment, e.status(), e.message())
        return
    raise AssertionError(f"expected a {status} naming {fragment!r}")


# Server and model metadata.
assert client.is_server_live() and client.is_server_ready()
metadata = client.get_server_metadata()
assert metadata["name"] == "ember" and "binary_tensor_data" in metadata["extensions"], metadata
iris = client.get_model_metadata("iris")
assert iris["platform"] == "onnxruntime_onnx" and iris["versions"] == ["1"], iris
assert iris["inputs"] == [{"name": "measurements", "datatype": "FP32", "shape": [-1, 4]}], iris
assert [o["name"] for o in iris["outputs"]] == ["probabilities", "species"], iris
mobilenet = client.get_model_metadata("mobilenet_v2", "1")
assert mobilenet["inputs"][0]["shape"] == [-1, 3, 224, 224] and mobilenet["outputs"][0]["shape"] == [-1, 1000]
assert client.is_model_ready("iris") and client.is_model_ready("mobilenet_v2", "1")

# A tensor model, JSON and binary: one flower of each species (iris rows 0, 50 and 100).
flowers = np.array([[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]], dtype=np.float32)
answers = {}
for binary in (False, True):
    result = infer("iris", [flowers], ["measurements"], ["FP32"], binary)
    species = result.as_numpy("species")
    probabilities = result.as_numpy("probabilities")
    assert species.dtype == np.int64 and list(species) == [0, 1, 2], species
    assert probabilities.shape == (3, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5), probabilities
    assert result.get_response()["id"] == "check-1"
    answers[binary] = probabilities
assert np.allclose(answers[False], answers[True], atol=1e-6), answers

# Only the output asked for comes back.
result = infer("iris", [flowers[:1]], ["measurements"], ["FP32"], True, outputs=["species"])
assert result.as_numpy("probabilities") is None and list(result.as_numpy("species")) == [0]

# An image classifier takes the preprocessed batch (tests/kserve/preprocess.py).
def preprocess(name):
    return preprocessed(PHOTOS / name)[0]


labels = (MODELS / "mobilenet_v2" / "labels.txt").read_text().splitlines()
batch = np.stack([preprocess("chelsea.png"), preprocess("coffee.png")])
for binary in (False, True):
    logits = infer("mobilenet_v2", [batch], ["image"], ["FP32"], binary).as_numpy("logits")
    assert logits.shape == (2, 1000), logits.shape
    top = [labels[i] for i in logits.argmax(axis=1)]
    assert top[0] in ("Egyptian cat", "tabby", "tiger cat") and top[1] in ("cup", "espresso", "coffee mug"), top

# A text classifier takes token ids and an attention mask (INT64), from the model's own tokenizer.json.
tokenizer = Tokenizer.from_file(str(MODELS / "sentiment" / "tokenizer.json"))
tokenizer.no_padding()
sentiment_labels = (MODELS / "sentiment" / "labels.txt").read_text().splitlines()
for text, expected in [("A wonderful, moving film.", "positive"), ("Dull, tedious and far too long.", "negative")]:
    ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
    logits = infer("sentiment", [ids, np.ones_like(ids)], ["input_ids", "attention_mask"], ["INT64", "INT64"], True)
    assert sentiment_labels[int(logits.as_numpy("logits").argmax())] == expected, (text, logits.as_numpy("logits"))

# A text generation model takes byte ids and a state (zeros start a sequence) and returns next-byte logits.
ids = np.frombuffer(b"ROMEO:", dtype=np.uint8).astype(np.int64)[None, :]
shakespeare = client.get_model_metadata("shakespeare")
result = infer("shakespeare", [ids, np.zeros((1, 1, 512), dtype=np.float32)], ["input_ids", "state"], ["INT64", "FP32"], True)
assert result.as_numpy("logits").shape == (1, 6, 256) and result.as_numpy("state").shape == (1, 1, 512), shakespeare

# Mismatches are 400s that name the input.
expect_error(400, "measurements", lambda: infer("iris", [flowers[:, :3].copy()], ["measurements"], ["FP32"], True))
expect_error(400, "FP64", lambda: infer("iris", [flowers.astype(np.float64)], ["measurements"], ["FP64"], False))
expect_error(400, "no input `petals`", lambda: infer("iris", [flowers], ["petals"], ["FP32"], True))
expect_error(404, "nope", lambda: client.get_model_metadata("nope"))

# The repository extension needs the admin token.
expect_error(401, "Bearer", lambda: client.get_model_repository_index())
index = {m["name"]: m for m in client.get_model_repository_index(headers=ADMIN)}
assert index["iris"]["state"] == "READY" and index["iris"]["version"] == "1", index
client.unload_model("iris", headers=ADMIN)
assert not client.is_model_ready("iris")
expect_error(503, "unloaded", lambda: infer("iris", [flowers], ["measurements"], ["FP32"], True))
client.load_model("iris", headers=ADMIN)
assert client.is_model_ready("iris")
assert list(infer("iris", [flowers], ["measurements"], ["FP32"], True).as_numpy("species")) == [0, 1, 2]

print("tritonclient checks passed")
