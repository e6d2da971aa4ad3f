"""The `openai` Python client against ember's OpenAI-compatible routes (tests/generate.rs runs it).

    python client_check.py http://127.0.0.1:PORT

Every completion is compared with what ember's own /v1/generate answers for the same seed: the two routes run the
same scheduler, so the text must be the same, streamed or not.
"""

import json
import sys
import urllib.request

import openai

base = sys.argv[1].rstrip("/")
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
PROMPT = "KING HENRY.\n"


def ember_generate(**body):
    request = urllib.request.Request(
        f"{base}/v1/generate", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def expect_error(kind, fragment, **params):
    try:
        client.completions.create(**params)
    except kind as error:
        assert fragment in str(error), f"{kind.__name__}: {error}"
        body = error.body
        assert isinstance(body, dict) and "message" in body and "type" in body, body
        return
    raise AssertionError(f"expected {kind.__name__} for {params}")


# The model listing, in OpenAI's shape.
ids = [model.id for model in client.models.list()]
assert "shakespeare" in ids, ids
model = client.models.retrieve("shakespeare")
assert (model.id, model.object, model.owned_by) == ("shakespeare", "model", "ember"), model
assert model.created > 1_600_000_000, model

# Not streamed: the same text as /v1/generate for the same seed, with the usage counted in tokens (bytes).
params = dict(model="shakespeare", prompt=PROMPT, max_tokens=48, temperature=0.7, top_p=0.95, seed=11)
completion = client.completions.create(**params)
ours = ember_generate(prompt=PROMPT, max_tokens=48, temperature=0.7, top_p=0.95, seed=11)
choice = completion.choices[0]
assert choice.text == ours["text"], (choice.text, ours["text"])
assert choice.finish_reason == "length" == ours["finish_reason"], choice
assert completion.usage.prompt_tokens == len(PROMPT.encode()), completion.usage
assert completion.usage.completion_tokens == ours["tokens"] == 48, completion.usage
assert completion.usage.total_tokens == completion.usage.prompt_tokens + 48, completion.usage
assert completion.object == "text_completion" and completion.model == "shakespeare", completion

# Streamed: the chunks join into the same text; the last chunk says why it ended; usage when asked.
pieces, reasons, usage = [], [], None
stream = client.completions.create(**params, stream=True, stream_options={"include_usage": True})
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        pieces.append(c.text)
        reasons.append(c.finish_reason)
assert "".join(pieces) == ours["text"], ("".join(pieces), ours["text"])
assert reasons[-1] == "length" and all(r is None for r in reasons[:-1]), reasons
assert usage is not None and usage.completion_tokens == 48, usage

# A stop sequence and echo; greedy decoding needs no seed to be reproducible.
stopped = client.completions.create(model="shakespeare", prompt=PROMPT, max_tokens=200, temperature=0, stop="\n")
ours = ember_generate(prompt=PROMPT, max_tokens=200, temperature=0, stop=["\n"])
assert stopped.choices[0].text == ours["text"] and stopped.choices[0].finish_reason == "stop", (stopped, ours)
echoed = client.completions.create(model="shakespeare", prompt=[PROMPT], max_tokens=8, temperature=0, echo=True)
assert echoed.choices[0].text.startswith(PROMPT), echoed

# Errors in OpenAI's shape, as the client's own exception classes.
expect_error(openai.NotFoundError, "does not exist", model="no-such-model", prompt="x")
expect_error(openai.BadRequestError, "needs a text-generation model", model="iris", prompt="x")
expect_error(openai.UnprocessableEntityError, "n must be 1", model="shakespeare", prompt="x", n=2)
expect_error(openai.UnprocessableEntityError, "max_tokens must be between 1", model="shakespeare", prompt="x",
             max_tokens=0)
expect_error(openai.UnprocessableEntityError, "temperature", model="shakespeare", prompt="x", temperature=-1)

print("openai client checks passed")
