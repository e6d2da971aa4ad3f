"""Drives ember's Open Inference Protocol gRPC service (inference.GRPCInferenceService, proto/kserve_v2.proto) with
NVIDIA's official Python client, tritonclient[grpc], as a user of Triton or KServe would: the gRPC twin of
client_check.py. Metadata, raw and typed tensor contents for every kind of default model, the errors and their
status codes, deadlines, and the model repository extension with and without the admin token. Run against a live
server:

    python tests/kserve/grpc_client_check.py HOST:GRPC_PORT ADMIN_TOKEN MODELS_DIR [--http HOST:HTTP_PORT]

With --http, every answer is also asked of the same server over HTTP (tritonclient[http], binary tensors) and must
be the same: outputs, names, shapes, datatypes and numbers, metadata, and errors (the same message, the gRPC code
that matches the HTTP status). Exits non-zero (an AssertionError with what differed) on the first check that fails.
"""

import argparse
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from preprocess import preprocessed
from tokenizers import Tokenizer
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

arguments = argparse.ArgumentParser(description="tritonclient[grpc] against ember's gRPC service")
arguments.add_argument("url", help="HOST:GRPC_PORT")
arguments.add_argument("token", help="the admin token")
arguments.add_argument("models", type=Path, help="the models folder (labels and tokenizers)")
arguments.add_argument("--http", metavar="HOST:PORT", help="the same server's HTTP address, to compare answers")
args = arguments.parse_args()
URL, TOKEN, MODELS = args.url, args.token, args.models
PHOTOS = Path(__file__).resolve().parents[1] / "data" / "images"
# gRPC metadata keys are lowercase: grpc refuses `Authorization` before sending ("Illegal header key").
ADMIN = {"authorization": f"Bearer {TOKEN}"}
ADMIN_METADATA = tuple(ADMIN.items())

client = grpcclient.InferenceServerClient(url=URL)
# The generated stubs, for what tritonclient never sends: typed contents, parameters, RepositoryIndex's `ready`.
stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(URL))
http = httpclient.InferenceServerClient(url=args.http) if args.http else None

# The gRPC code for each HTTP status ember answers (google.rpc.Code's mapping).
CODE_OF_HTTP = {
    "400": grpc.StatusCode.INVALID_ARGUMENT,
    "422": grpc.StatusCode.INVALID_ARGUMENT,
    "401": grpc.StatusCode.UNAUTHENTICATED,
    "404": grpc.StatusCode.NOT_FOUND,
    "413": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "429": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "503": grpc.StatusCode.UNAVAILABLE,
    "504": grpc.StatusCode.DEADLINE_EXCEEDED,
    "500": grpc.StatusCode.INTERNAL,
}
# The element lists of InferTensorContents for ember's datatypes (FP16 travels only raw).
TYPED = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def error_of(call):
    """The (code, message) of the error `call` raises: tritonclient's exception or a stub's grpc.RpcError."""
    try:
        call()
    except InferenceServerException as e:
        return e.status(), e.message()
    except grpc.RpcError as e:
        return str(e.code()), e.details()
    raise AssertionError("expected an error, got an answer")


def expect_error(code, fragment, call, http_call=None):
    """`call` fails with `code` (a grpc.StatusCode) and a message naming `fragment`; with --http, `http_call` fails
    with the same message and a status that maps to the same code. Returns the message."""
    status, message = error_of(call)
    assert status == str(code) and fragment in (message or ""), (code, fragment, status, message)
    if http and http_call:
        http_status, http_message = error_of(http_call)
        assert CODE_OF_HTTP.get(http_status) == code, (code, http_status, http_message)
        assert message == http_message, f"gRPC says {message!r}, HTTP says {http_message!r}"
    return message


def inputs_of(module, arrays, names, datatypes):
    inputs = []
    for name, array, datatype in zip(names, arrays, datatypes):
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)  # gRPC: raw_input_contents; HTTP: binary tensor data
        inputs.append(tensor)
    return inputs


def infer(model, arrays, names, datatypes, outputs=None, **options):
    """tritonclient's infer: the inputs as raw_input_contents, as the client always sends them."""
    requested = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, inputs_of(grpcclient, arrays, names, datatypes), outputs=requested, **options)


def http_infer(model, arrays, names, datatypes, outputs=None):
    requested = [httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs] if outputs else None
    return http.infer(model, inputs_of(httpclient, arrays, names, datatypes), outputs=requested)


def typed_request(model, arrays, names, datatypes, version=""):
    """A ModelInferRequest with the inputs as typed InferTensorContents (no raw_input_contents)."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, id="typed-1")
    for name, array, datatype in zip(names, arrays, datatypes):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        getattr(tensor.contents, TYPED[datatype]).extend(array.reshape(-1).tolist())
    return request


def raw_request(model, arrays, names, datatypes):
    """What tritonclient sends, built by hand so that tests can spoil it."""
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array, datatype in zip(names, arrays, datatypes):
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request


def outputs_of(response):
    """{name: numpy array} of a ModelInferResponse, from raw_output_contents or from typed contents."""
    arrays = {}
    raw = list(response.raw_output_contents)
    assert not raw or len(raw) == len(response.outputs), "raw_output_contents needs one entry per output"
    for index, output in enumerate(response.outputs):
        dtype = triton_to_np_dtype(output.datatype)
        if raw:
            assert not output.HasField("contents"), f"output {output.name}: both raw and typed contents"
            array = np.frombuffer(raw[index], dtype=dtype)
        else:
            array = np.array(getattr(output.contents, TYPED[output.datatype]), dtype=dtype)
        arrays[output.name] = array.reshape(list(output.shape))
    return arrays


def assert_raw_answer(result, model, names, request_id=None):
    """tritonclient reads only raw_output_contents (typed contents read as empty arrays): the answer is raw, one
    entry per output, in the order asked (else the model's), no output parameters, who answered and the id."""
    response = result.get_response()
    assert [o.name for o in response.outputs] == names, response.outputs
    assert len(response.raw_output_contents) == len(names), len(response.raw_output_contents)
    assert not any(o.HasField("contents") for o in response.outputs), "typed contents beside raw ones"
    assert not any(o.parameters for o in response.outputs), "binary_data_size and the like are HTTP's, not gRPC's"
    assert response.model_name == model and response.model_version == "1", (response.model_name, response.model_version)
    if request_id is not None:
        assert response.id == request_id, response.id


def same_as_http(result, model, arrays, names, datatypes, outputs=None, atol=1e-6):
    """With --http: the HTTP client's answer to the same request has the same outputs, in the same order."""
    if not http:
        return
    answer = http_infer(model, arrays, names, datatypes, outputs)
    http_names = [o["name"] for o in answer.get_response()["outputs"]]
    grpc_names = [o.name for o in result.get_response().outputs]
    assert grpc_names == http_names, (grpc_names, http_names)
    for name in grpc_names:
        ours, theirs = result.as_numpy(name), answer.as_numpy(name)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, (name, ours.dtype, ours.shape, theirs.shape)
        assert np.allclose(ours, theirs, atol=atol), (name, np.abs(ours - theirs).max())


# Server and model metadata.
assert client.is_server_live() and client.is_server_ready()
metadata = client.get_server_metadata()
assert metadata.name == "ember" and metadata.version and "model_repository" in metadata.extensions, metadata
assert client.get_server_metadata(as_json=True)["name"] == "ember"
if http:
    assert http.get_server_metadata() == client.get_server_metadata(as_json=True), "server metadata differs"
iris = client.get_model_metadata("iris")
assert iris.name == "iris" and iris.platform == "onnxruntime_onnx" and list(iris.versions) == ["1"], iris
assert [(i.name, i.datatype, list(i.shape)) for i in iris.inputs] == [("measurements", "FP32", [-1, 4])], iris
assert [(o.name, o.datatype, list(o.shape)) for o in iris.outputs] == [
    ("probabilities", "FP32", [-1, 3]),
    ("species", "INT64", [-1]),
], iris
# as_json goes through protobuf's JSON mapping: int64 values (the shapes) become strings.
assert client.get_model_metadata("iris", as_json=True)["inputs"] == [
    {"name": "measurements", "datatype": "FP32", "shape": ["-1", "4"]}
]
mobilenet = client.get_model_metadata("mobilenet_v2", "1")
assert list(mobilenet.inputs[0].shape) == [-1, 3, 224, 224] and list(mobilenet.outputs[0].shape) == [-1, 1000]
for model in ["iris", "mobilenet_v2", "sentiment", "shakespeare"]:
    ours = client.get_model_metadata(model, as_json=True)
    for tensor in ours["inputs"] + ours["outputs"]:
        tensor["shape"] = [int(d) for d in tensor["shape"]]
    if http:
        theirs = http.get_model_metadata(model)
        theirs.pop("task", None)  # HTTP's own addition; ModelMetadataResponse has no field for it
        assert ours == theirs, (model, ours, theirs)
assert client.is_model_ready("iris") and client.is_model_ready("mobilenet_v2", "1")
# A model that is not ready is an answer (ready: false), not an error, as tritonclient[http] reads a 404 or 503.
assert client.is_model_ready("nope") is False and client.is_model_ready("iris", "7") is False
if http:
    assert http.is_model_ready("nope") is False and http.is_model_ready("iris", "7") is False

# A tensor model, raw (tritonclient) and typed (fp32_contents): one flower of each species (iris rows 0, 50, 100).
flowers = np.array([[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]], dtype=np.float32)
result = infer("iris", [flowers], ["measurements"], ["FP32"], request_id="check-1")
assert_raw_answer(result, "iris", ["probabilities", "species"], request_id="check-1")
species, probabilities = result.as_numpy("species"), result.as_numpy("probabilities")
assert species.dtype == np.int64 and list(species) == [0, 1, 2], species
assert probabilities.shape == (3, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5), probabilities
same_as_http(result, "iris", [flowers], ["measurements"], ["FP32"])
typed = stub.ModelInfer(typed_request("iris", [flowers], ["measurements"], ["FP32"]))
assert typed.id == "typed-1" and len(typed.raw_output_contents) == 2, "typed inputs still get raw outputs"
assert np.allclose(outputs_of(typed)["probabilities"], probabilities, atol=1e-6)
assert list(outputs_of(typed)["species"]) == [0, 1, 2]
# A version named, and the answer as typed contents when the request asks binary_data_output: false.
request = typed_request("iris", [flowers], ["measurements"], ["FP32"], version="1")
request.parameters["binary_data_output"].bool_param = False
typed = stub.ModelInfer(request)
assert not typed.raw_output_contents and list(typed.outputs[1].contents.int64_contents) == [0, 1, 2], typed
assert list(typed.outputs[0].shape) == [3, 3] and len(typed.outputs[0].contents.fp32_contents) == 9, typed
assert np.allclose(outputs_of(typed)["probabilities"], probabilities, atol=1e-6)

# Only the output asked for comes back.
result = infer("iris", [flowers[:1]], ["measurements"], ["FP32"], outputs=["species"])
assert_raw_answer(result, "iris", ["species"])
assert result.as_numpy("probabilities") is None and list(result.as_numpy("species")) == [0]
same_as_http(result, "iris", [flowers[:1]], ["measurements"], ["FP32"], outputs=["species"])


# An image classifier takes the preprocessed batch (tests/kserve/preprocess.py).
def preprocess(name):
    return preprocessed(PHOTOS / name)[0]


labels = (MODELS / "mobilenet_v2" / "labels.txt").read_text().splitlines()
batch = np.stack([preprocess("chelsea.png"), preprocess("coffee.png")])
result = infer("mobilenet_v2", [batch], ["image"], ["FP32"])
assert_raw_answer(result, "mobilenet_v2", ["logits"])
logits = result.as_numpy("logits")
assert logits.shape == (2, 1000) and logits.dtype == np.float32, (logits.shape, logits.dtype)
top = [labels[i] for i in logits.argmax(axis=1)]
assert top[0] in ("Egyptian cat", "tabby", "tiger cat") and top[1] in ("cup", "espresso", "coffee mug"), top
same_as_http(result, "mobilenet_v2", [batch], ["image"], ["FP32"], atol=1e-4)
typed = outputs_of(stub.ModelInfer(typed_request("mobilenet_v2", [batch], ["image"], ["FP32"])))
assert np.allclose(typed["logits"], logits, atol=1e-4), np.abs(typed["logits"] - logits).max()
# Eight photos are 4.8 MB of raw input, over gRPC's default 4 MiB message limit: served up to --max-body-bytes.
eight = np.repeat(batch[:1], 8, axis=0)
logits = infer("mobilenet_v2", [eight], ["image"], ["FP32"]).as_numpy("logits")
assert logits.shape == (8, 1000) and len({labels[i] for i in logits.argmax(axis=1)}) == 1, logits.argmax(axis=1)

# A text classifier takes token ids and an attention mask (INT64), from the model's own tokenizer.json.
tokenizer = Tokenizer.from_file(str(MODELS / "sentiment" / "tokenizer.json"))
tokenizer.no_padding()
sentiment_labels = (MODELS / "sentiment" / "labels.txt").read_text().splitlines()
for text, expected in [("A wonderful, moving film.", "positive"), ("Dull, tedious and far too long.", "negative")]:
    ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
    arrays, names = [ids, np.ones_like(ids)], ["input_ids", "attention_mask"]
    result = infer("sentiment", arrays, names, ["INT64", "INT64"])
    assert sentiment_labels[int(result.as_numpy("logits").argmax())] == expected, (text, result.as_numpy("logits"))
    same_as_http(result, "sentiment", arrays, names, ["INT64", "INT64"], atol=1e-5)
    typed = outputs_of(stub.ModelInfer(typed_request("sentiment", arrays, names, ["INT64", "INT64"])))
    assert np.allclose(typed["logits"], result.as_numpy("logits"), atol=1e-5), (text, typed)

# A text generation model takes byte ids and a state (zeros start a sequence) and returns next-byte logits.
ids = np.frombuffer(b"ROMEO:", dtype=np.uint8).astype(np.int64)[None, :]
arrays, names, datatypes = [ids, np.zeros((1, 1, 512), dtype=np.float32)], ["input_ids", "state"], ["INT64", "FP32"]
result = infer("shakespeare", arrays, names, datatypes)
assert_raw_answer(result, "shakespeare", ["logits", "state"])
assert result.as_numpy("logits").shape == (1, 6, 256) and result.as_numpy("state").shape == (1, 1, 512)
same_as_http(result, "shakespeare", arrays, names, datatypes, atol=1e-5)
typed = outputs_of(stub.ModelInfer(typed_request("shakespeare", arrays, names, datatypes)))
assert np.allclose(typed["logits"], result.as_numpy("logits"), atol=1e-5)

# Mismatches are INVALID_ARGUMENT (HTTP's 400) that name the input, with HTTP's message.
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
narrow = flowers[:, :3].copy()
expect_error(
    INVALID,
    "input `measurements`: shape [3, 3] does not match the model's [-1, 4]",
    lambda: infer("iris", [narrow], ["measurements"], ["FP32"]),
    lambda: http_infer("iris", [narrow], ["measurements"], ["FP32"]),
)
wide = flowers.astype(np.float64)
expect_error(
    INVALID,
    "FP64",
    lambda: infer("iris", [wide], ["measurements"], ["FP64"]),
    lambda: http_infer("iris", [wide], ["measurements"], ["FP64"]),
)
expect_error(
    INVALID,
    "no input `petals`",
    lambda: infer("iris", [flowers], ["petals"], ["FP32"]),
    lambda: http_infer("iris", [flowers], ["petals"], ["FP32"]),
)
expect_error(
    INVALID,
    "no output `colour`",
    lambda: infer("iris", [flowers], ["measurements"], ["FP32"], outputs=["colour"]),
    lambda: http_infer("iris", [flowers], ["measurements"], ["FP32"], outputs=["colour"]),
)
classify = [grpcclient.InferRequestedOutput("probabilities", class_count=2)]
http_classify = [httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=2)]
expect_error(
    INVALID,
    "classification extension is not supported",
    lambda: client.infer("iris", inputs_of(grpcclient, [flowers], ["measurements"], ["FP32"]), outputs=classify),
    lambda: http.infer("iris", inputs_of(httpclient, [flowers], ["measurements"], ["FP32"]), outputs=http_classify),
)
# ... and the gRPC-only ones: raw bytes that do not fit the shape, typed values in the wrong list or of the wrong
# count, both kinds of data at once, raw entries that do not match the inputs, no data.
spoiled = raw_request("iris", [flowers], ["measurements"], ["FP32"])
spoiled.raw_input_contents[0] = spoiled.raw_input_contents[0][:-4]
expect_error(INVALID, "measurements", lambda: stub.ModelInfer(spoiled))
wrong_list = typed_request("iris", [flowers], ["measurements"], ["FP32"])
wrong_list.inputs[0].contents.Clear()
wrong_list.inputs[0].contents.int64_contents.extend([5] * 12)
expect_error(INVALID, "measurements", lambda: stub.ModelInfer(wrong_list))
short = typed_request("iris", [flowers], ["measurements"], ["FP32"])
del short.inputs[0].contents.fp32_contents[-1]
expect_error(INVALID, "measurements", lambda: stub.ModelInfer(short))
both = typed_request("iris", [flowers], ["measurements"], ["FP32"])
both.raw_input_contents.append(flowers.tobytes())
expect_error(INVALID, "measurements", lambda: stub.ModelInfer(both))
extra = raw_request("iris", [flowers], ["measurements"], ["FP32"])
extra.raw_input_contents.append(flowers.tobytes())
expect_error(INVALID, "raw_input_contents", lambda: stub.ModelInfer(extra))
empty = service_pb2.ModelInferRequest(model_name="iris")
empty.inputs.add(name="measurements", datatype="FP32", shape=[1, 4])
expect_error(INVALID, "measurements", lambda: stub.ModelInfer(empty))

# Unknown models and versions are NOT_FOUND (HTTP's 404), a malformed version INVALID_ARGUMENT, as over HTTP.
expect_error(NOT_FOUND, "nope", lambda: client.get_model_metadata("nope"), lambda: http.get_model_metadata("nope"))
expect_error(
    NOT_FOUND,
    "nope",
    lambda: infer("nope", [flowers], ["measurements"], ["FP32"]),
    lambda: http_infer("nope", [flowers], ["measurements"], ["FP32"]),
)
expect_error(
    NOT_FOUND,
    "no version 7",
    lambda: client.get_model_metadata("iris", "7"),
    lambda: http.get_model_metadata("iris", "7"),
)
expect_error(
    NOT_FOUND,
    "no version 7",
    lambda: client.infer("iris", inputs_of(grpcclient, [flowers], ["measurements"], ["FP32"]), model_version="7"),
    lambda: http.infer("iris", inputs_of(httpclient, [flowers], ["measurements"], ["FP32"]), model_version="7"),
)
expect_error(
    INVALID,
    "model version `x`",
    lambda: client.get_model_metadata("iris", "x"),
    lambda: http.get_model_metadata("iris", "x"),
)

# A method ember does not implement is UNIMPLEMENTED (tonic's own answer).
expect_error(grpc.StatusCode.UNIMPLEMENTED, "", lambda: client.get_inference_statistics("iris"))
expect_error(grpc.StatusCode.UNIMPLEMENTED, "", lambda: client.get_model_config("iris"))

# A deadline shorter than the work (client_timeout is sent as grpc-timeout) is DEADLINE_EXCEEDED, and the server
# serves on: the next requests are answered.
long_prompt = np.frombuffer(b"ROMEO: " * 280, dtype=np.uint8).astype(np.int64)[None, :]
state = np.zeros((1, 1, 512), dtype=np.float32)
expect_error(
    grpc.StatusCode.DEADLINE_EXCEEDED,
    "",
    lambda: infer("shakespeare", [long_prompt, state], ["input_ids", "state"], ["INT64", "FP32"], client_timeout=0.001),
)
assert client.is_server_live()
result = infer("shakespeare", [long_prompt, state], ["input_ids", "state"], ["INT64", "FP32"], client_timeout=60)
assert result.as_numpy("logits").shape == (1, long_prompt.shape[1], 256)

# The repository extension needs the admin token (`authorization: Bearer <token>` metadata): UNAUTHENTICATED
# (HTTP's 401) without it or with a wrong one, with HTTP's message.
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
expect_error(
    UNAUTHENTICATED,
    "Bearer",
    lambda: client.get_model_repository_index(),
    lambda: http.get_model_repository_index(),
)
wrong = {"authorization": "Bearer not-the-token"}
expect_error(
    UNAUTHENTICATED,
    "wrong",
    lambda: client.get_model_repository_index(headers=wrong),
    lambda: http.get_model_repository_index(headers=wrong),
)
expect_error(UNAUTHENTICATED, "Bearer", lambda: client.unload_model("iris"), lambda: http.unload_model("iris"))
expect_error(UNAUTHENTICATED, "Bearer", lambda: client.load_model("iris"), lambda: http.load_model("iris"))
assert client.is_model_ready("iris"), "a refused unload unloaded"

index = client.get_model_repository_index(headers=ADMIN)
rows = [(m.name, m.version, m.state, m.reason) for m in index.models]
assert ("iris", "1", "READY", "") in rows and [r[0] for r in rows] == sorted(r[0] for r in rows), rows
if http:
    http_index = http.get_model_repository_index(headers=ADMIN)
    theirs = [(m["name"], m["version"], m["state"], m["reason"]) for m in http_index]
    assert rows == theirs, (rows, theirs)
assert {m["name"] for m in client.get_model_repository_index(headers=ADMIN, as_json=True)["models"]} >= {"iris"}

client.unload_model("iris", headers=ADMIN)  # tritonclient sends parameters {unload_dependents: false}
assert not client.is_model_ready("iris")
expect_error(
    grpc.StatusCode.UNAVAILABLE,
    "unloaded",
    lambda: infer("iris", [flowers], ["measurements"], ["FP32"]),
    lambda: http_infer("iris", [flowers], ["measurements"], ["FP32"]),
)
index = client.get_model_repository_index(headers=ADMIN)
assert [(m.state, m.reason) for m in index.models if m.name == "iris"] == [("UNAVAILABLE", "unloaded")], index
ready_only = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), metadata=ADMIN_METADATA)
assert "iris" not in {m.name for m in ready_only.models} and ready_only.models, ready_only
expect_error(
    NOT_FOUND,
    "nope",
    lambda: client.load_model("nope", headers=ADMIN),
    lambda: http.load_model("nope", headers=ADMIN),
)
client.load_model("iris", headers=ADMIN)
assert client.is_model_ready("iris")
assert list(infer("iris", [flowers], ["measurements"], ["FP32"]).as_numpy("species")) == [0, 1, 2]

print("tritonclient grpc checks passed")
