"""Python's own clients against ember over TLS with API keys (tests/security.rs runs it), each verifying the
server's certificate against the test's CA: `requests` (urllib3 over OpenSSL) on the v2 HTTP route,
`tritonclient[grpc]` with ssl=True on the gRPC port, and the `openai` client (httpx) on /v1.

    python clients_check.py HTTPS_BASE GRPC_HOST:PORT CA_FILE API_KEY

Exits non-zero (an AssertionError saying what differed) on the first check that fails; prints
`python TLS client checks passed`.
"""

import sys

import httpx
import numpy as np
import openai
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

base, grpc_url, ca, key = sys.argv[1:5]
base = base.rstrip("/")
BEARER = f"Bearer {key}"
FLOWER = [5.1, 3.5, 1.4, 0.2]
BODY = {"inputs": [{"name": "measurements", "shape": [1, 4], "datatype": "FP32", "data": FLOWER}]}
WRONG_KEY = "wrong-0123456789abcdef0123456789"


def expect_grpc_error(code, call):
    try:
        call()
    except InferenceServerException as error:
        assert error.status() == f"StatusCode.{code}", f"expected {code}: {error.status()} {error}"
        return error
    raise AssertionError(f"expected {code}, the call succeeded")


# requests: verified against the test CA, the key in the Authorization header.
infer_url = f"{base}/v2/models/iris/infer"
answer = requests.post(infer_url, json=BODY, headers={"Authorization": BEARER}, verify=ca, timeout=30)
assert answer.status_code == 200, (answer.status_code, answer.text)
outputs = {output["name"]: output["data"] for output in answer.json()["outputs"]}
http_probabilities = outputs["probabilities"]
assert abs(sum(http_probabilities) - 1) < 1e-4, http_probabilities
refused = requests.post(infer_url, json=BODY, verify=ca, timeout=30)
assert refused.status_code == 401 and refused.json()["error_type"] == "unauthorized", refused.text
assert refused.headers["WWW-Authenticate"].startswith("Bearer"), refused.headers
try:
    # The system's CAs only: the test CA is not among them, so the certificate must not be trusted.
    requests.get(f"{base}/health/live", timeout=30)
    raise AssertionError("requests trusted a certificate of the test CA without being given it")
except requests.exceptions.SSLError:
    pass
print("requests: v2 infer 200 over TLS with the key, 401 without it, "
      "the certificate refused without the test CA")

# tritonclient[grpc] with ssl=True: the key as `authorization` metadata (gRPC keys are lowercase).
client = grpcclient.InferenceServerClient(url=grpc_url, ssl=True, root_certificates=ca)
assert client.is_server_live(), "ServerLive is an operator's call: open without a key"
measurements = grpcclient.InferInput("measurements", [1, 4], "FP32")
measurements.set_data_from_numpy(np.array([FLOWER], dtype=np.float32))
result = client.infer("iris", [measurements], headers={"authorization": BEARER})
grpc_probabilities = result.as_numpy("probabilities")[0].tolist()
assert np.allclose(grpc_probabilities, http_probabilities, atol=1e-6), (grpc_probabilities, http_probabilities)
expect_grpc_error("UNAUTHENTICATED", lambda: client.infer("iris", [measurements]))
expect_grpc_error("UNAUTHENTICATED", lambda: client.infer("iris", [measurements],
                                                          headers={"authorization": f"Bearer {WRONG_KEY}"}))
plain = grpcclient.InferenceServerClient(url=grpc_url)
expect_grpc_error("UNAVAILABLE", lambda: plain.is_server_live(client_timeout=10))
print("tritonclient[grpc] ssl=True: infer with the key answers as over HTTP, UNAUTHENTICATED without it or with a "
      "wrong one, a plain-text channel refused")

# The openai client, its api_key sent as the bearer token.
verified = httpx.Client(verify=ca, timeout=60)
ai = openai.OpenAI(base_url=f"{base}/v1", api_key=key, http_client=verified, max_retries=0)
ids = [model.id for model in ai.models.list()]
assert "shakespeare" in ids and "iris" in ids, ids
completion = ai.completions.create(model="shakespeare", prompt="ROMEO.\n", max_tokens=16, seed=3)
assert completion.usage.completion_tokens == 16 and completion.choices[0].text, completion
wrong = openai.OpenAI(base_url=f"{base}/v1", api_key=WRONG_KEY, http_client=verified, max_retries=0)
try:
    wrong.completions.create(model="shakespeare", prompt="ROMEO.\n", max_tokens=4)
    raise AssertionError("a completion with a wrong key was served")
except openai.AuthenticationError as error:
    assert error.status_code == 401 and error.body["type"] == "authentication_error", error.body
    assert WRONG_KEY not in str(error.body), error.body
print(f"openai: {len(ids)} models listed and a 16-token completion over TLS, AuthenticationError with a wrong key")
print("python TLS client checks passed")
