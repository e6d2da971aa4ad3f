"""Issue 17, item 1: does reading a long text as overlapping windows beat reading its first 128 tokens, and which
pooling of the windows wins? Measured with the exported TorchScript model on long texts training never saw
(long_texts.py: held-out sentences joined, and Pang & Lee's full reviews). The validation split of the snippets
(it only chose the training run's checkpoint) fits the learnt weighting; the test split is reported.

    cd models/export && ../../.venv/bin/python experiments/sentiment_windows.py   (after make models; ~10 min)

Joined texts come in three constructions:
  same:      every sentence has the text's label (a review that keeps to its verdict);
  majority:  two thirds of the sentences have the text's label, the others the opposite, shuffled;
  late:      the same mix, the opposite-label sentences first (the verdict comes at the end, as reviews do).
Poolings of the windows' outputs:
  truncate:    the first window only (what ember did before: the first 128 tokens);
  mean_logits: the mean of the windows' logits;
  mean_probs:  the mean of the windows' probabilities (what ember does);
  learnt:      a weighted mean of the probabilities, weight exp(a * |logit margin| + b * position) with position
               0 for the first window and 1 for the last: a and b fitted on the validation texts by grid search.
"""

import itertools
import random
import sys
import tomllib
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd()))
import long_texts  # noqa: E402
from sentiment import hutto_sets, movie_splits  # noqa: E402

ROOT = Path.cwd().parents[1]
JOINED_PER_LABEL = 40  # per construction and length bucket
REVIEWS_PER_LABEL = 60  # per length bucket over 1,500 characters (every review of 600-1,500 is taken)
torch.set_num_threads(2)
model = torch.jit.load(str(ROOT / "models/sentiment/1/model.pt"))
model.eval()
text_config = tomllib.loads((ROOT / "models/sentiment/model.toml").read_text())["text"]
windows = long_texts.Windows(ROOT / "models/sentiment/tokenizer.json", text_config)


def learnt(logits, a, b):
    margin = (logits[:, 1] - logits[:, 0]).abs()
    position = torch.linspace(0, 1, len(logits)) if len(logits) > 1 else torch.zeros(1)
    weights = torch.softmax(a * margin + b * position, 0)
    return (weights[:, None] * logits.softmax(-1)).sum(0)


POOLINGS = {
    "truncate": long_texts.first_window,
    "mean_logits": lambda l: l.mean(0),
    "mean_probs": long_texts.mean_probabilities,
}

splits = movie_splits(hutto_sets()["movies"])
test = splits["test"]
short = long_texts.per_text_logits(model, windows, test)
print(f"held-out sentences: {len(test)}, accuracy {long_texts.accuracy(short, [l for _, l in test], long_texts.first_window):.4f}"
      f" (each in one window: {all(len(l) == 1 for l in short)})")

rng = random.Random(17)
sets = {}
constructions = {"same": {}, "majority": {"opposite_every": 3}, "late": {"opposite_every": 3, "verdict_last": True}}
for split in ("validation", "test"):
    for (kind, options), bucket in itertools.product(constructions.items(), long_texts.BUCKETS[:3]):
        texts = long_texts.joined(splits[split], bucket, JOINED_PER_LABEL, rng, **options)
        sets[split, kind, bucket] = (long_texts.per_text_logits(model, windows, texts), [l for _, l in texts])
every_review, reviews = long_texts.reviews(), []
for bucket in long_texts.BUCKETS:
    for label in (0, 1):
        mine = [r for r in every_review if r[1] == label and long_texts.bucket_of(r[0]) == bucket]
        reviews += mine if bucket == long_texts.BUCKETS[0] else rng.sample(mine, min(REVIEWS_PER_LABEL, len(mine)))
review_logits = long_texts.per_text_logits(model, windows, reviews)
for bucket in long_texts.BUCKETS:
    chosen = [i for i, (t, _) in enumerate(reviews) if long_texts.bucket_of(t) == bucket]
    sets["test", "Pang & Lee reviews", bucket] = ([review_logits[i] for i in chosen], [reviews[i][1] for i in chosen])

# The learnt weighting: the grid point with the best mean accuracy over every validation set.
grid = [(a, b) for a in (0.0, 0.25, 0.5, 1.0, 2.0) for b in (0.0, 0.5, 1.0, 2.0, 4.0)]
validation = [v for k, v in sets.items() if k[0] == "validation"]
score = {g: sum(long_texts.accuracy(o, y, lambda l: learnt(l, *g)) for o, y in validation) / len(validation) for g in grid}
best = max(grid, key=score.get)
print(f"learnt weighting: a={best[0]} (confidence), b={best[1]} (position), validation mean accuracy {score[best]:.4f}"
      f" (mean_probs there: {score[(0.0, 0.0)]:.4f})")
POOLINGS["learnt"] = lambda l: learnt(l, *best)

print("\ntest texts: accuracy by construction and length (characters)\n")
print("| texts | length | count | windows (mean, max) | " + " | ".join(POOLINGS) + " |")
print("|---|---|---|---|" + "---|" * len(POOLINGS))
for (split, kind, bucket), (outputs, labels) in sets.items():
    if split != "test":
        continue
    counts = [len(o) for o in outputs]
    cells = " | ".join(f"{100 * long_texts.accuracy(outputs, labels, p):.1f}%" for p in POOLINGS.values())
    print(f"| {kind} | {bucket[0]}-{bucket[1] - 1} | {len(labels)} | {sum(counts) / len(counts):.1f}, {max(counts)} | {cells} |")
