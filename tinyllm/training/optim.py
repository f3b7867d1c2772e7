"""Muon for the hidden weight matrices, AdamW for the rest (`--matrix_optimizer muon`).

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks") replaces each 2-D hidden
matrix's momentum update by its nearest semi-orthogonal matrix, computed with five Newton-Schulz iterations.
Embeddings, the output head, norms and biases keep AdamW, as in the reference recipe. Compared with
`torch.optim.Muon` (one parameter at a time), the Newton-Schulz iterations here run on every matrix of a shape at
once as a batched matmul, which is what makes Muon cheap enough on a CPU: a 4-layer model's 28 matrices become 2
batches. The step is the reference one: Nesterov momentum 0.95, update scaled by sqrt(max(1, rows / cols)),
decoupled weight decay.

Given to transformers.Trainer as an optimizer factory (`Trainer(optimizer_cls_and_kwargs=(MuonFactory, kw))`), so
Trainer's scheduler, clipping, checkpointing and resume work unchanged.
"""

from __future__ import annotations

from collections import defaultdict

import torch

__all__ = ["MuonWithAdamW", "MuonFactory", "newton_schulz", "muon_parameter_names"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the reference quintic iteration


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise each matrix of a batch (..., rows, cols): U V^T of its SVD, up to a scale
    per singular value in [0.7, 1.2] (the reference iteration's known looseness)."""
    a, b, c = NS_COEFFICIENTS
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + eps)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * (s @ s)) @ x
    return x.mT if tall else x


def muon_parameter_names(model) -> set[str]:
    """The hidden weight matrices: 2-D, not the token/position embeddings and not the output head (which is tied
    to the embedding in most small models)."""
    skip = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            skip.add(id(module.weight))
    out = set()
    for name, p in model.named_parameters():
        if p.requires_grad and p.ndim == 2 and id(p) not in skip and "embed" not in name and "wpe" not in name:
            out.add(name)
    return out


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over two kinds of parameter group: groups with `use_muon=True` take the Muon step, the others
    AdamW's (torch.optim.AdamW itself, sharing the same group dicts, so schedulers and clipping see one optimizer).
    """

    def __init__(self, param_groups: list[dict], momentum: float = 0.95, ns_steps: int = 5,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        for group in param_groups:
            group.setdefault("use_muon", False)
        defaults = {"lr": 1e-3, "weight_decay": 0.0, "momentum": momentum, "ns_steps": ns_steps}
        super().__init__(param_groups, defaults)
        adam_groups = [g for g in self.param_groups if not g["use_muon"]]
        fused = all(p.device.type in ("cpu", "cuda") for g in adam_groups for p in g["params"])
        self.adam = torch.optim.AdamW(adam_groups, betas=betas, eps=eps, fused=fused or None) if adam_groups else None
        # AdamW adopted the same dicts (add_param_group keeps the dict it is given): a scheduler's lr change on
        # self.param_groups reaches it.

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        by_shape: dict[tuple, list] = defaultdict(list)
        for group in self.param_groups:
            if not group["use_muon"]:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"])  # Nesterov
                tall = p.shape[0] > p.shape[1]  # a tall matrix goes in its wide batch, transposed
                wide = update.mT if tall else update
                by_shape[(tuple(wide.shape), group["ns_steps"])].append((p, group, wide, tall))
        for (_, steps), items in by_shape.items():
            ortho = newton_schulz(torch.stack([u for _, _, u, _ in items]), steps)
            for (p, group, _, tall), o in zip(items, ortho.unbind(0)):
                scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(o.mT if tall else o, alpha=-group["lr"] * scale)
        if self.adam is not None:
            self.adam.step()
        return loss

    def state_dict(self):
        out = super().state_dict()
        out["adamw"] = self.adam.state_dict() if self.adam is not None else None
        return out

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        adam = state_dict.pop("adamw", None)
        super().load_state_dict(state_dict)  # new group dicts (holding AdamW's keys too: they were shared)
        if self.adam is not None:
            if adam is not None:
                self.adam.load_state_dict(adam)
            self.adam.param_groups = [g for g in self.param_groups if not g["use_muon"]]


class MuonFactory:
    """Trainer's optimizer-factory protocol: `MuonFactory()(model, **kwargs)` returns the optimizer."""

    def __call__(self, model, *, lr: float, muon_lr: float, weight_decay: float, muon_weight_decay: float,
                 betas=(0.9, 0.999), eps: float = 1e-8) -> MuonWithAdamW:
        names = muon_parameter_names(model)
        muon, decay, no_decay = [], [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name in names:
                muon.append(p)
            elif p.ndim >= 2:
                decay.append(p)
            else:
                no_decay.append(p)
        groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                  {"params": no_decay, "lr": lr, "weight_decay": 0.0},
                  {"params": muon, "lr": muon_lr, "weight_decay": muon_weight_decay, "use_muon": True}]
        return MuonWithAdamW([g for g in groups if g["params"]], betas=betas, eps=eps)
