"""A per-layer table of a network: output shape, parameters and FLOPs, with totals.

FLOPs come from torch's own FlopCounterMode (a multiply-add counts as 2 FLOPs; convolutions and matrix
products are counted, element-wise ops are not), so they agree with what other torch tools report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class LayerRow:
    name: str
    kind: str
    output: str
    params: int
    flops: int


@dataclass
class Summary:
    rows: list[LayerRow]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    trainable: int
    flops: int

    def table(self) -> str:
        head = ("layer", "type", "output", "params", "FLOPs")
        body = [(r.name, r.kind, r.output, f"{r.params:,}", f"{r.flops:,}") for r in self.rows]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(5)]
        line = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        rule = "-" * len(line(head))
        totals = [
            f"total params: {self.params:,} ({self.trainable:,} trainable)",
            f"total FLOPs per image: {self.flops:,} ({self.flops / 1e6:,.2f} MFLOPs)",
            f"input {'x'.join(map(str, self.input_shape))} -> output {'x'.join(map(str, self.output_shape))}",
        ]
        return "\n".join([line(head), rule, *map(line, body), rule, *totals])


def _shape(out) -> str:
    if isinstance(out, torch.Tensor):
        return "x".join(str(d) for d in out.shape[1:])
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return _shape(out[0]) + " ..."
    return "-"


@torch.no_grad()
def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> Summary:
    """Run one zero image of shape C x H x W through model (in eval mode) and tabulate every leaf layer."""
    rows: list[LayerRow] = []
    seen: set[str] = set()
    names = {m: n for n, m in model.named_modules()}
    root = type(model).__name__

    def hook(module, _inputs, output):
        name = names[module]
        params = 0 if name in seen else sum(p.numel() for p in module.parameters(recurse=False))
        seen.add(name)
        rows.append(LayerRow(name, type(module).__name__, _shape(output), params, 0))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            out = model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    counts = counter.get_flop_counts()
    done: set[str] = set()
    for row in rows:
        if row.name not in done:  # a layer called twice is counted once, on its first row
            row.flops = int(sum(counts.get(f"{root}.{row.name}", {}).values()))
            done.add(row.name)
    other = sum(p.numel() for n, m in model.named_modules() if n not in seen for p in m.parameters(recurse=False))
    if other:
        rows.append(LayerRow("(parameters outside leaf layers)", "-", "-", other, 0))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Summary(rows, tuple(input_shape), tuple(out.shape[1:]), total, trainable, int(counter.get_total_flops()))
