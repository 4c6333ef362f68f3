"""Build the example notebooks from the Python source below, so that they stay reviewable.

Run ``python notebooks/make_notebooks.py`` after editing a cell here; it rewrites
``notebooks/0*.ipynb`` without outputs. ``tests/test_notebooks.py`` checks that the stored
notebooks are what this script builds, and executes them.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}

SETUP = """\
import tempfile

import torch

torch.set_num_threads(1)  # these small models run fastest on one thread
torch.manual_seed(0)
out_dir = tempfile.mkdtemp(prefix="torchprune_share_")  # every file goes here
"""


def md(text: str) -> tuple[str, str]:
    return "markdown", textwrap.dedent(text).strip("\n")


def code(text: str) -> tuple[str, str]:
    return "code", textwrap.dedent(text).strip("\n")


# -- 01: sensitivity analysis -------------------------------------------------------------
SENSITIVITY = [
    md(
        """
        # 1. Pruning sensitivity analysis

        Deep Compression (Han, Mao & Dally, ICLR 2016) shrinks a trained network in three
        stages: **pruning** (remove the small weights, re-train the rest), **trained
        quantization** (share the weights of a layer among a few k-means centroids,
        re-train the centroids) and **Huffman coding** (store the resulting indices and
        codes with variable-length codes).

        How much can each layer be pruned? Layers differ a lot, so before pruning we measure
        each layer's *sensitivity*: prune one layer at a time to increasing sparsities,
        evaluate the network without any re-training, and restore the layer. This notebook
        runs that scan on scikit-learn's 8x8 digits (bundled, so it runs offline in seconds)
        and turns it into per-layer sparsities for the next notebook.
        """
    ),
    code(SETUP),
    md(
        """
        ## Data and a trained model

        `load_digits` splits the 1,797 images into train / validation / test;
        `make_loaders` batches them. The model is Caffe's LeNet-5 (two convolutions, two
        fully connected layers), padded for 8x8 inputs.
        """
    ),
    code(
        """
        from torch import nn

        from torchprune_share.demo.data import load_digits, make_loaders
        from torchprune_share.demo.models import LeNet5
        from torchprune_share.training import evaluate, train

        splits = load_digits(seed=0)
        train_loader, val_loader, test_loader = make_loaders(splits, batch_size=64, seed=0)
        print(len(splits.train), "train /", len(splits.val), "val /", len(splits.test), "test images")

        model = LeNet5(splits.image_size)
        criterion = nn.CrossEntropyLoss()
        train(model, train_loader, epochs=15, lr=0.05, progress=False)  # SGD, momentum 0.9
        val_acc, val_loss = evaluate(model, val_loader, criterion)
        print(f"validation accuracy {val_acc:.2f}%, loss {val_loss:.4f}")
        """
    ),
    md(
        """
        ## The scan

        `perform_sensitivity_analysis(model, val_loader, sparsities, validate_func, criterion)`
        prunes each weight tensor (every weight of dim >= 2 by default) alone to each
        sparsity, smallest magnitudes first, and calls
        `validate_func(model, val_loader, criterion)`, which returns `(accuracy, loss)`;
        `torchprune_share.training.evaluate` is such a function. The model is restored
        bitwise after every point.
        """
    ),
    code(
        """
        from torchprune_share import sensitivity

        sparsities = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99]
        before = {k: v.clone() for k, v in model.state_dict().items()}

        sens = sensitivity.perform_sensitivity_analysis(
            model, val_loader, sparsities, evaluate, criterion, progress=False
        )

        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        print("scanned:", list(sens), "baseline:", sens.baseline)
        """
    ),
    md(
        """
        ## Plot and table

        `sensitivities_to_png` draws one line per layer with the unpruned model's accuracy
        (or, with `metric="loss"`, its loss) dashed; `sensitivities_to_csv` writes one row
        per (layer, sparsity). The result is
        a plain dict as well, `{layer: {sparsity: {"accuracy": ..., "loss": ...}}}`.
        """
    ),
    code(
        """
        import os

        from IPython.display import Image, display

        png = sensitivity.sensitivities_to_png(sens, os.path.join(out_dir, "prune_sensitivity.png"))
        loss_png = sensitivity.sensitivities_to_png(
            sens, os.path.join(out_dir, "prune_sensitivity_loss.png"), metric="loss"
        )
        csv_path = sensitivity.sensitivities_to_csv(sens, os.path.join(out_dir, "prune_sensitivity.csv"))
        display(Image(filename=str(png)), Image(filename=str(loss_png)))
        """
    ),
    code(
        """
        with open(csv_path) as f:
            print("".join(f.readlines()[:5]), "...")

        # The same numbers pivoted: validation accuracy (%) per layer and sparsity.
        print("sparsity     " + "".join(f"{name:>14}" for name in sens))
        for s in sparsities:
            print(f"{s:<13}" + "".join(f"{sens[name][s]['accuracy']:14.2f}" for name in sens))
        """
    ),
    md(
        """
        ## Reading the scan

        * A line that stays on the dashed baseline far to the right is a layer with many
          redundant weights: it can be pruned hard. A line that bends early is a sensitive
          layer. In the paper's networks (and here) the first convolution, with
          few weights that all see the raw image, is the most sensitive, while the large
          fully connected layers tolerate 90 % sparsity or more.
        * Every point prunes *one* layer and does *not* re-train, so the scan is
          pessimistic about what re-training recovers and optimistic about pruning all
          layers at once: the damage of several layers adds up.
        * Accuracy on 359 validation images moves in steps of 0.28 points, so small rises
          above the baseline are noise; the loss is smoother and often shows the damage
          earlier.

        `recommend_sparsities(sens, max_drop)` walks each layer's levels upwards and keeps
        the highest sparsity whose accuracy stays within `max_drop` percentage points of
        the baseline, stopping at the first level that fails. Its output is exactly the
        `options` of a `LevelPruner`.
        """
    ),
    code(
        """
        from torchprune_share import LevelPruner, recommend_sparsities

        options = recommend_sparsities(sens, max_drop=1.0)
        for name, s in options:
            print(f"{name:14} -> sparsity {s}")
        """
    ),
    md(
        """
        ## All recommended sparsities at once

        Applying every recommendation together, still without re-training, shows why
        Deep Compression re-trains after pruning: the drops of the layers add up. The
        next notebook prunes while training, which recovers the accuracy.
        """
    ),
    code(
        """
        import copy

        from torchprune_share import compression_summary

        pruned = copy.deepcopy(model)
        LevelPruner(options).prune(model=pruned)
        print(compression_summary(pruned, [name for name, _ in options]))
        print()
        print(
            f"validation accuracy: dense {val_acc:.2f}%, "
            f"all layers pruned {evaluate(pruned, val_loader)[0]:.2f}%"
        )
        """
    ),
]

# -- 02: pruning --------------------------------------------------------------------------
PRUNING = [
    md(
        """
        # 2. Pruning while training

        The first stage of Deep Compression (Han et al., *Learning both Weights and
        Connections*, NIPS 2015): remove the weights of smallest magnitude and re-train the
        remaining ones, so that they take over the work of the removed ones. The paper
        keeps 8 % of LeNet-300-100's weights at the same MNIST accuracy.

        `LevelPruner` prunes named tensors to per-tensor sparsities. Its masks are
        parametrizations (`weight = original * mask`, in `torch.nn.utils.parametrize`), so
        pruned weights are zero in every forward pass, whatever the optimizer does to
        `original`. This notebook prunes LeNet-300-100 on the digits data three ways: at
        once and re-trained (the dnn-compression-style loop), gradually on an AGP schedule, and
        through `torch.nn.utils.prune`.
        """
    ),
    code(SETUP),
    md(
        """
        ## A dense model to start from

        LeNet-300-100 is the fully connected network of the paper (64-300-100-10 for 8x8
        images). We train it once and keep its weights, so that every experiment below
        starts from the same dense model.
        """
    ),
    code(
        """
        import copy

        from torch import nn

        from torchprune_share.demo.data import load_digits, make_loaders
        from torchprune_share.demo.models import LeNet300100
        from torchprune_share.training import evaluate, train

        splits = load_digits(seed=0)
        train_loader, val_loader, test_loader = make_loaders(splits, batch_size=64, seed=0)
        criterion = nn.CrossEntropyLoss()

        dense = train(LeNet300100(splits.image_size), train_loader, epochs=20, lr=0.05, progress=False)
        dense_acc = evaluate(dense, test_loader)[0]
        print(f"dense accuracy: validation {evaluate(dense, val_loader)[0]:.2f}%, test {dense_acc:.2f}%")


        def fresh_dense() -> nn.Module:
            \"\"\"A copy of the trained dense model.\"\"\"
            return copy.deepcopy(dense)
        """
    ),
    md(
        """
        ## 1. Prune at once, then re-train

        The per-layer sparsities are the paper's for LeNet-300-100 (8 %, 9 % and 26 % of the
        weights kept); notebook 1 shows how to derive them from a sensitivity scan
        instead. The first `prune` removes the smallest weights of each layer; accuracy
        drops.
        """
    ),
    code(
        """
        from torchprune_share import LevelPruner, compression_summary

        targets = {"fc1.weight": 0.92, "fc2.weight": 0.91, "fc3.weight": 0.74}
        model = fresh_dense()
        pruner = LevelPruner([[name, s] for name, s in targets.items()])
        pruner.prune(model=model, update_masks=False)
        print(f"test accuracy right after pruning: {evaluate(model, test_loader)[0]:.2f}%")
        """
    ),
    md(
        """
        Re-training is the dnn-compression-style loop: an optimizer step, then
        `pruner.prune(model=model, update_masks=False)`. With masks in the forward pass
        that call has nothing left to do (the targets are constant, so it returns at once);
        it matters with a schedule (below), and `update_masks=True` would recompute the
        masks from the current `original` values, letting pruned weights come back.
        """
    ),
    code(
        """
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        for epoch in range(10):
            for x, y in train_loader:
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                pruner.prune(model=model, update_masks=False)
            if epoch % 3 == 2:
                print(f"epoch {epoch + 1}: validation accuracy {evaluate(model, val_loader)[0]:.2f}%")

        oneshot_acc = evaluate(model, test_loader)[0]
        print(f"test accuracy: dense {dense_acc:.2f}%, pruned and re-trained {oneshot_acc:.2f}%")
        print(compression_summary(model, list(targets)))
        """
    ),
    md(
        """
        ## Exact zeros through SGD momentum

        A weight that is zeroed in place does not stay zero: its gradient is not zero, and
        momentum and weight decay keep moving it. Here the zero comes from the mask in the
        forward pass: `original` receives a zero gradient where the mask is `False` and the
        weight is `original * mask`, exactly zero after any number of steps.
        """
    ),
    code(
        """
        mask = model.fc1.parametrizations.weight[0].mask
        weight = model.fc1.weight
        print(
            f"fc1: {int((~mask).sum())} masked entries, all exactly zero: {bool((weight[~mask] == 0).all())}"
        )

        optimizer.zero_grad()
        x, y = next(iter(train_loader))
        criterion(model(x), y).backward()
        grad = model.fc1.parametrizations.weight.original.grad
        print(f"gradient of original at masked entries is zero: {bool((grad[~mask] == 0).all())}")

        # The same zeros written into a plain weight come back after one epoch of SGD.
        naive = fresh_dense()
        with torch.no_grad():
            naive.fc1.weight[~mask] = 0.0
        train(naive, train_loader, epochs=1, lr=0.01, progress=False)
        revived = int((naive.fc1.weight[~mask] != 0).sum())
        print(f"without a mask: {revived} of {int((~mask).sum())} zeroed fc1 weights are nonzero again")
        """
    ),
    md(
        r"""
        ## 2. Automated gradual pruning (AGP)

        Zhu & Gupta (2017) prune gradually while training, along a cubic ramp from the
        initial sparsity $s_i$ to the final $s_f$ between steps $t_0$ and $t_e$:
        $s_t = s_f + (s_i - s_f)\,(1 - \frac{t - t_0}{t_e - t_0})^3$, updated every
        `frequency` steps. Pruning is fast at first, while many weights are redundant, and
        slows down near the target, leaving the network time to recover.

        A `LevelPruner` takes an `AGPSchedule` in place of a number. `pruner.step()`
        advances its step counter by one and prunes up to the schedule's target;
        `pruner.prune(model, step=t)` does the same for an explicit step.
        """
    ),
    code(
        """
        from torchprune_share import AGPSchedule

        epochs, steps_per_epoch = 12, len(train_loader)
        end_step = 8 * steps_per_epoch  # ramp over 8 epochs, fine-tune for 4
        model = fresh_dense()
        agp = LevelPruner(
            {
                name: AGPSchedule(0.0, s, start_step=0, end_step=end_step, frequency=steps_per_epoch // 2)
                for name, s in targets.items()
            },
            model=model,
        )
        agp.step()  # step 0: the schedules start at 0 % sparsity
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        history = [(0, 0.0, evaluate(model, val_loader)[0])]
        for _ in range(epochs):
            for x, y in train_loader:
                optimizer.zero_grad()
                criterion(model(x), y).backward()
                optimizer.step()
                agp.step()
            sparsity = 1 - float((model.fc1.weight != 0).float().mean())
            history.append((agp.last_step, sparsity, evaluate(model, val_loader)[0]))

        agp_acc = evaluate(model, test_loader)[0]
        for step, sparsity, acc in history:
            print(f"step {step:4d}: fc1 sparsity {100 * sparsity:5.1f}%, validation accuracy {acc:.2f}%")
        """
    ),
    code(
        """
        import os

        import matplotlib.pyplot as plt

        steps = range(0, epochs * steps_per_epoch + 1)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, schedule in agp.options.items():
            ax.plot(steps, [100 * schedule.sparsity(t) for t in steps], label=f"{name} target")
        ax.set_xlabel("training step")
        ax.set_ylabel("sparsity (%)")
        ax2 = ax.twinx()
        ax2.plot([h[0] for h in history], [h[2] for h in history], "ko--", label="validation accuracy")
        ax2.set_ylabel("validation accuracy (%)")
        fig.legend(loc="center right", bbox_to_anchor=(0.88, 0.45), fontsize="small")
        ax.set_title("AGP: cubic sparsity ramps while training")
        fig.savefig(os.path.join(out_dir, "agp.png"), dpi=120)
        plt.show()

        print(compression_summary(model, list(targets)))
        print(
            f"test accuracy: dense {dense_acc:.2f}%, one-shot + re-train {oneshot_acc:.2f}%, AGP {agp_acc:.2f}%"
        )
        """
    ),
    md(
        """
        ## 3. `torch.nn.utils.prune` interoperates

        `LevelPruningMethod` is a `torch.nn.utils.prune.BasePruningMethod`, so torch's own
        functions use it. With `prune.global_unstructured` one magnitude threshold is
        shared by all layers, and the layers end up with different sparsities.
        """
    ),
    code(
        """
        from torch.nn.utils import prune

        from torchprune_share import LevelPruningMethod

        model = fresh_dense()
        params = [(model.fc1, "weight"), (model.fc2, "weight"), (model.fc3, "weight")]
        prune.global_unstructured(params, pruning_method=LevelPruningMethod, amount=0.9)
        for (module, name), label in zip(params, ["fc1", "fc2", "fc3"]):
            zeros = int((getattr(module, name) == 0).sum())
            print(f"{label}: {100 * zeros / module.weight.numel():.1f}% zeros")
        total = sum(m.weight.numel() for m, _ in params)
        print(f"all three: {sum(int((m.weight == 0).sum()) for m, _ in params)} of {total} pruned")
        print("torch's hooks:", [k for k in model.state_dict() if k.startswith("fc1")])
        print(f"test accuracy without re-training: {evaluate(model, test_loader)[0]:.2f}%")
        """
    ),
    md(
        """
        Torch keeps the mask in a forward pre-hook (`weight_orig`, `weight_mask`). This
        package's functions accept such tensors and adopt their mask. Here
        `global_level_prune`, the parametrization-based counterpart of
        `prune.global_unstructured`, prunes half of the remaining weights with one more
        global threshold; the torch masks become parametrizations, which
        `save_compressed` (notebook 3) can store.
        """
    ),
    code(
        """
        from torchprune_share import global_level_prune

        global_level_prune(params, amount=0.5)
        print("after global_level_prune:", [k for k in model.state_dict() if k.startswith("fc1")])
        print(compression_summary(model, ["fc1.weight", "fc2.weight", "fc3.weight"]))
        """
    ),
]

# -- 03: weight sharing -------------------------------------------------------------------
SHARING = [
    md(
        """
        # 3. Trained quantization, Huffman coding and the compressed file

        After pruning, Deep Compression's second stage shares weights: the surviving weights
        of a layer are clustered with k-means into at most $2^b$ centroids, and every weight
        is stored as a $b$-bit index into that layer's codebook. The centroids are then
        *trained*: a centroid's gradient is the sum of the gradients of the weights that
        share it (Eq. 3 of the paper). The third stage Huffman-codes the codes and the
        sparse positions, whose distributions are far from uniform.

        This notebook shares the weights of a pruned LeNet-300-100, fine-tunes the
        codebooks, re-quantizes, writes the compressed file, loads it into a fresh model
        and reports where the bytes go.
        """
    ),
    code(SETUP),
    md(
        """
        ## A pruned model

        As in notebook 2: train the dense model, prune it to the paper's sparsities and
        re-train. The size of `torch.save` of the dense `state_dict` is the reference for
        the compression ratio at the end.
        """
    ),
    code(
        """
        import io

        from torch import nn

        from torchprune_share import LevelPruner
        from torchprune_share.demo.data import load_digits, make_loaders
        from torchprune_share.demo.models import LeNet300100
        from torchprune_share.training import evaluate, train

        splits = load_digits(seed=0)
        train_loader, val_loader, test_loader = make_loaders(splits, batch_size=64, seed=0)
        criterion = nn.CrossEntropyLoss()

        model = train(LeNet300100(splits.image_size), train_loader, epochs=20, lr=0.05, progress=False)
        accuracy = {"dense": evaluate(model, test_loader)[0]}
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        dense_bytes = len(buffer.getvalue())

        targets = {"fc1.weight": 0.92, "fc2.weight": 0.91, "fc3.weight": 0.74}
        pruner = LevelPruner(targets)
        pruner.prune(model=model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        train(model, train_loader, epochs=8, optimizer=optimizer, progress=False)  # masks persist
        accuracy["pruned"] = evaluate(model, test_loader)[0]
        print(f"torch.save of the dense state_dict: {dense_bytes} bytes")
        print(f"test accuracy: dense {accuracy['dense']:.2f}%, pruned {accuracy['pruned']:.2f}%")
        """
    ),
    md(
        """
        ## How many bits per layer?

        `perform_bits_analysis` is the sensitivity scan of weight sharing: it shares one
        layer at a time at each bit width (k-means of its unpruned weights, exactly as the
        `Quantizer` below would), evaluates without fine-tuning, and restores the layer.
        `recommend_bits` picks, per layer, the fewest bits within `max_drop` of the
        baseline, in the `Quantizer`'s option format.
        """
    ),
    code(
        """
        import os

        from IPython.display import Image, display

        from torchprune_share import bits_analysis, recommend_bits

        bits_scan = bits_analysis.perform_bits_analysis(
            model, val_loader, [8, 6, 5, 4, 3, 2, 1], evaluate, criterion, progress=False
        )
        png = bits_analysis.sensitivities_to_png(bits_scan, os.path.join(out_dir, "bits_sensitivity.png"))
        bits_analysis.sensitivities_to_csv(bits_scan, os.path.join(out_dir, "bits_sensitivity.csv"))
        display(Image(filename=str(png)))
        print("accuracy within 0.5 points:", recommend_bits(bits_scan, max_drop=0.5))
        print("loss within +0.01:         ", recommend_bits(bits_scan, max_drop=0.01, metric="loss"))
        """
    ),
    md(
        """
        Reading it: 359 validation images make the accuracy move in steps of 0.28 points,
        so it is noisy (a layer shared at very few bits can even score above the
        baseline); the loss is smoother and gives a more conservative recommendation.
        Both say that the pruned layers of this small problem need only a few bits (the
        paper kept 5 bits for AlexNet's fully connected layers and 8 for its
        convolutions). Every point shares *one* layer; sharing all of them adds up the
        errors, so we start with a margin below.
        """
    ),
    md(
        """
        ## Share the weights

        `Quantizer(options=[(name, bits), ...])` registers a `WeightSharing`
        parametrization on each tensor: `weight = codebook[index]`, where the codebook is
        the trainable `original` (one centroid per code, initialised linearly over the
        weights' range as the paper recommends) and `index` a `uint8` buffer. Pruned
        entries get a reserved code for an untrainable zero, so the sparsity is kept.
        We take 4 bits for the large layers and 5 for the small, sensitive output layer.
        """
    ),
    code(
        """
        from torchprune_share import Quantizer

        quantizer = Quantizer(options=[("fc1.weight", 4), ("fc2.weight", 4), ("fc3.weight", 5)])
        with torch.no_grad():
            quantizer.quantize(model)
        accuracy["shared"] = evaluate(model, test_loader)[0]

        for name in ("fc1", "fc2", "fc3"):
            layer = getattr(model, name)
            codebook = layer.parametrizations.weight.original
            distinct = torch.unique(layer.weight.detach())
            print(
                f"{name}: codebook {tuple(codebook.shape)}, index {layer.parametrizations.weight[0].index.dtype}, "
                f"{len(distinct)} distinct values (zero included), "
                f"{100 * float((layer.weight == 0).float().mean()):.1f}% zeros"
            )
        print(f"test accuracy: pruned {accuracy['pruned']:.2f}% -> shared {accuracy['shared']:.2f}%")
        """
    ),
    md(
        """
        ## Fine-tune the codebooks

        The codebooks are new parameters, so build a new optimizer. Every centroid receives
        the **sum** of the gradients of the weights that share it, often hundreds of
        them: SGD at the learning rate that trained the dense weights would throw the
        centroids far off. Adam's per-parameter step size (or a much smaller SGD learning
        rate) keeps the steps at the scale of the weights. Biases train as usual.
        """
    ),
    code(
        """
        before = model.fc1.parametrizations.weight.original.detach().clone()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        train(model, train_loader, epochs=5, optimizer=optimizer, progress=False)
        accuracy["fine-tuned"] = evaluate(model, test_loader)[0]

        moved = (model.fc1.parametrizations.weight.original.detach() - before).abs().max()
        print(
            f"largest fc1 centroid move: {float(moved):.4f}; "
            f"still {len(torch.unique(model.fc1.weight.detach()))} distinct fc1 values"
        )
        print(
            f"test accuracy: shared {accuracy['shared']:.2f}% -> fine-tuned {accuracy['fine-tuned']:.2f}%"
        )
        """
    ),
    md(
        """
        ## Re-quantize

        Fine-tuning moves the centroids but never moves a weight to another cluster.
        Calling `quantize` on a shared model re-clusters it: k-means runs again on the
        current weight values and the codebook is replaced; the pruned entries stay
        pruned. At the same widths this changes nothing here, since every weight already
        holds exactly one of its layer's centroids. Its use is the dnn-compression-style "re-train and
        re-quantize" loop at *fewer* bits: the bits scan said two bits per weight might
        do, so re-cluster to 2 / 2 / 3 bits and fine-tune the new codebooks again (with a
        new optimizer, as the codebooks are new parameters).
        """
    ),
    code(
        """
        weights = {name: getattr(model, name).weight.detach().clone() for name in ("fc1", "fc2", "fc3")}
        with torch.no_grad():
            quantizer.quantize(model)  # same widths: the same clusters
        print(
            "unchanged at the same widths:",
            all(torch.equal(w, getattr(model, name).weight) for name, w in weights.items()),
        )

        zeros_before = int((model.fc1.weight == 0).sum())
        narrower = Quantizer(options=[("fc1.weight", 2), ("fc2.weight", 2), ("fc3.weight", 3)])
        with torch.no_grad():
            narrower.quantize(model)
        accuracy["2-3 bits"] = evaluate(model, test_loader)[0]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        train(model, train_loader, epochs=3, optimizer=optimizer, progress=False)
        accuracy["2-3 bits, fine-tuned"] = evaluate(model, test_loader)[0]

        print(f"fc1 zeros before {zeros_before}, after {int((model.fc1.weight == 0).sum())}")
        print(f"fc1 codebook now {tuple(model.fc1.parametrizations.weight.original.shape)}")
        print(
            f"test accuracy: re-quantized {accuracy['2-3 bits']:.2f}% "
            f"-> fine-tuned {accuracy['2-3 bits, fine-tuned']:.2f}%"
        )
        """
    ),
    md(
        """
        ## The compressed file

        `save_compressed` writes Deep Compression's storage format: per pruned tensor the
        positions of the kept entries as *relative* indices (the gap to the previous kept
        entry, in a few bits, with a filler entry when a gap is too long), per shared tensor
        its codebook and one code per kept entry, Huffman coded where that is smaller;
        everything else in the `state_dict` (biases) as is. `load_compressed` rebuilds the
        same parametrizations in a freshly built model, which then computes bitwise the
        same outputs. Reading never unpickles anything.
        """
    ),
    code(
        """
        from torchprune_share import compression_report, load_compressed, save_compressed

        path = os.path.join(out_dir, "lenet300.tpsc")
        file_bytes = save_compressed(model, path)
        fresh = load_compressed(LeNet300100(splits.image_size), path)

        model.eval()
        fresh.eval()
        with torch.no_grad():
            identical = all(torch.equal(model(x), fresh(x)) for x, _ in test_loader)
        print(
            f"{file_bytes} bytes; reloaded outputs identical: {identical}; "
            f"reloaded test accuracy {evaluate(fresh, test_loader)[0]:.2f}%"
        )
        assert identical
        """
    ),
    md(
        """
        ## Where the bytes go

        `compression_report(path)` reads the file and gives, per tensor, the columns of the
        paper's Tables 2-4: `dense` (fp32 bytes), `P` (after pruning: relative indices and
        fp32 values), `P+Q` (after quantization: relative indices, codes and the codebook,
        packed at their widths) and `P+Q+H` (after Huffman coding: the bytes really in the
        file). Biases are stored raw and cost the same in every column. The relative-index
        width (`idx bits`) is chosen per tensor for the smallest Huffman-coded record, and
        `P` and `P+Q` are computed at that width; a file written with `huffman=False`
        chooses the widths that pack best, so it is smaller than the `P+Q` total.
        """
    ),
    code(
        """
        report = compression_report(path)
        print(report)
        totals = report.totals()
        print()
        print(
            f"P: {totals['dense'] / totals['P']:.1f}x, P+Q: {totals['dense'] / totals['PQ']:.1f}x, "
            f"P+Q+H: {totals['dense'] / totals['PQH']:.1f}x smaller than the fp32 tensors"
        )
        print(
            f"file {file_bytes} bytes vs torch.save of the dense state_dict {dense_bytes} bytes: "
            f"{dense_bytes / file_bytes:.1f}x smaller"
        )
        no_huffman = compression_report(model, huffman=False).file_bytes
        print(f"the same model saved with huffman=False: {no_huffman} bytes")
        raw = sum(row["PQH"] for row in report.rows if row["tensor"].endswith("bias"))
        print(f"biases, stored raw: {raw} bytes, {100 * raw / file_bytes:.0f}% of the file")
        print("test accuracy:", {k: round(v, 2) for k, v in accuracy.items()})
        """
    ),
    md(
        """
        ## What the stages bought

        Pruning alone stores each kept weight as a 32-bit value plus its relative index;
        sharing replaces the value by a code of a few bits; Huffman coding squeezes the
        skewed code and gap distributions further. The paper reaches 40x on
        LeNet-300-100 for MNIST; the digits network is smaller (64 inputs instead of 784),
        so its uncompressed biases weigh more in the file, and the sparsities were the
        paper's rather than tuned for this data. `torchprune-share demo` runs the whole
        pipeline, with the sparsities and bits chosen from the two scans.
        """
    ),
]

# -- 04: post-training compression ---------------------------------------------------------
POST_TRAINING = [
    md(
        """
        # 4. Compressing a trained model without retraining

        Notebooks 2 and 3 re-train after every stage, as Deep Compression does. Often there
        is no training loop at hand: the model is pretrained, and only a few hundred
        unlabelled inputs are available. Then what matters is not how close the compressed
        *weights* are to the originals (what k-means minimises) but how close each layer's
        *outputs* are on real inputs. Given calibration batches, `Quantizer.quantize` and
        `LevelPruner.prune` minimise exactly that: from each layer's input Hessian
        $H = \\sum_t x_t x_t^\\top$ they fit codebooks and assign codes column by column,
        feeding each column's error into the columns not yet done (a GPTQ-class sweep), and
        prune by the output error a weight's removal causes, updating the survivors to
        compensate (SparseGPT-class). The result is the same parametrizations as before.

        This notebook trains a LeNet-300-100 on the bundled digits, then compresses it with
        no re-training: data-free against calibrated, on 128 training images.
        """
    ),
    code(SETUP),
    code(
        """
        import copy

        from torchprune_share import LevelPruner, Quantizer
        from torchprune_share.demo.data import load_digits, make_loaders
        from torchprune_share.demo.models import LeNet300100
        from torchprune_share.training import evaluate, train

        splits = load_digits(seed=0)
        train_loader, val_loader, test_loader = make_loaders(splits, batch_size=64, seed=0)
        model = train(LeNet300100(splits.image_size), train_loader, epochs=20, lr=0.05, progress=False)
        model.eval()
        calibration = [x for x, _ in train_loader][:2]  # 128 images, labels unused
        test_x = torch.cat([x for x, _ in test_loader])
        with torch.no_grad():
            dense_out = model(test_x)


        def report(label, m):
            with torch.no_grad():
                out = m(test_x)
            err = float((out - dense_out).square().sum() / dense_out.square().sum())
            print(f"{label:<28} accuracy {evaluate(m, test_loader)[0]:6.2f}%   output error {err:.4f}")
            return err


        report("dense", model)
        """
    ),
    md(
        """
        ## Weight sharing at 2 and 3 bits

        `calibration` is any iterable of model inputs; `forward(model, batch)` says how to
        call the model on one (by default `model(batch)` for a tensor, `model(*batch)` for
        a tuple, `model(**batch)` for a dict). Layers are processed in order, each seeing
        the inputs produced by the already compressed layers before it. Watch the output
        error (relative to the dense outputs on the test images): accuracy on 359 test
        images moves by 0.28 points per image and is too coarse to rank near-lossless
        settings.
        """
    ),
    code(
        """
        errors = {}
        for bits in (3, 2):
            free = copy.deepcopy(model)
            Quantizer({"*": bits}, granularity="per_channel").quantize(free)
            errors[bits, "data-free"] = report(f"{bits}-bit, data-free", free)
            calibrated = copy.deepcopy(model)
            Quantizer({"*": bits}, granularity="per_channel").quantize(
                calibrated, calibration, progress=False
            )
            errors[bits, "calibrated"] = report(f"{bits}-bit, calibrated", calibrated)
            assert errors[bits, "calibrated"] < errors[bits, "data-free"]
        print(calibrated.fc1.parametrizations.weight)
        """
    ),
    md(
        """
        ## Pruning, then sharing

        Magnitude pruning removes the smallest weights; calibrated pruning removes the
        ones whose loss the layer's output feels least, and moves the survivors to make up
        for them. A calibrated quantization afterwards keeps every zero and compensates
        only with kept weights.
        """
    ),
    code(
        """
        free = copy.deepcopy(model)
        LevelPruner({"*": 0.8}).prune(free)
        report("80% pruned, magnitude", free)
        calibrated = copy.deepcopy(model)
        LevelPruner({"*": 0.8}).prune(calibrated, calibration=calibration, progress=False)
        report("80% pruned, calibrated", calibrated)
        Quantizer({"*": 3}, granularity="per_channel").quantize(
            calibrated, calibration, progress=False
        )
        report("  then 3-bit, calibrated", calibrated)
        print(f"fc1 zeros: {100 * float((calibrated.fc1.weight == 0).float().mean()):.1f}%")

        import os

        from torchprune_share import save_compressed

        path = os.path.join(out_dir, "post_training.tpsc")
        print(f"{save_compressed(calibrated, path)} bytes on disk, no re-training")
        """
    ),
    md(
        """
        Everything downstream is unchanged: the compressed model trains (the codebooks are
        parameters), saves with `save_compressed` (above) and bakes with `bake`. Other algorithms
        are a setting: `algorithm="diagonal"` (cheaper: only the Hessian's diagonal,
        Wanda-style pruning) or `algorithm="fisher"` with a `loss_fn` (SqueezeLLM-style
        Fisher-weighted k-means). `benchmarks/post_training.py` compares them on a
        pretrained BERT encoder, a small GPT and LeNet-5, beside coremltools.

        For token models (a dict with integer `input_ids`, or a bare `(B, T)` tensor of
        token ids) the calibration also runs on synthetic sequences, their tokens drawn
        from the calibration tokens (by default 5 per real one when sharing, 3 when
        pruning, none when sharing tensors pruned already): with a few dozen sentences the
        fit is near exact on them and much worse on others, and the synthetic ones close
        part of that gap. These images are not augmented.
        """
    ),
]

NOTEBOOKS = {
    "01_sensitivity_analysis.ipynb": SENSITIVITY,
    "02_pruning.ipynb": PRUNING,
    "03_weight_sharing.ipynb": SHARING,
    "04_post_training.ipynb": POST_TRAINING,
}


def build(cells: list[tuple[str, str]], stem: str) -> nbformat.NotebookNode:
    """A notebook of ``cells`` without outputs; cell ids are fixed so rebuilds are identical."""
    nb = new_notebook(
        metadata={"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    )
    for i, (kind, source) in enumerate(cells):
        make = new_markdown_cell if kind == "markdown" else new_code_cell
        nb.cells.append(make(source, id=f"{stem}-{i:02d}"))
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The stored text of notebook ``name`` (ends with a newline)."""
    text = nbformat.writes(build(NOTEBOOKS[name], name.split("_")[0]))
    return text if text.endswith("\n") else text + "\n"


def main(argv: list[str] | None = None) -> int:
    for name in NOTEBOOKS:
        path = HERE / name
        path.write_text(render(name))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
