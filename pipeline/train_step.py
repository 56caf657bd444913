"""One optimisation step of S2VT: forward, loss, backward, clipping, the Adam update.

Reads and writes nothing; `TrainStep` is what the training loop calls once per
batch. It runs the step eagerly, or, on one CUDA GPU, replays it from a captured
CUDA graph: S2VT's word steps are many small kernels, so an eager step there is
bound by launching them, and a graph launches the whole step at once. A graph is
captured for the full batch shape the first time it is needed (after the first
step, which creates Adam's state), one for teacher forcing and one for scheduled
sampling; a smaller last batch runs eagerly. Both paths compute the same thing
with the same random draws, so a run resumes exactly either way.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from . import distributed
from .errors import PipelineWarning
from .model import masked_loss
from .precision import autocast


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Make Adam keep its step counts where `capturable` needs them: beside the parameters (a CUDA graph
    can update them there) or on the CPU. Also called after loading a checkpoint from another device."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state:
                state["step"] = state["step"].to(param.device if capturable else "cpu", torch.float32)


@dataclass
class _Graph:
    """A captured step and the tensors it reads and writes in place."""

    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor  # (b, T + 2) long
    features: torch.Tensor  # (b, F, D)
    teacher_forcing: torch.Tensor  # 0-d
    loss: torch.Tensor  # 0-d, the step's loss


class TrainStep:
    """`step(tokens, features, teacher_forcing)` trains on one batch and returns its loss (a 0-d tensor
    on the device; under torchrun this rank's share of the global batch's loss)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 precision: str, pad_id: int, clip_grad: float, batch_size: int, cuda_graphs: bool = True,
                 world: distributed.World = distributed.World(), label_smoothing: float = 0.0):
        self.model, self.optimizer, self.device, self.precision = model, optimizer, device, precision
        self.pad_id, self.clip_grad, self.batch_size, self.world = pad_id, clip_grad, batch_size, world
        self.label_smoothing = label_smoothing
        self.use_graphs = cuda_graphs and device.type == "cuda" and not world.distributed
        self.graphs: dict[bool, _Graph] = {}  # by whether the step samples the model's own words
        self.lr = torch.zeros((), device=device)  # what a graph's Adam update reads as the learning rate
        set_capturable(optimizer, self.use_graphs)

    def __call__(self, tokens: torch.Tensor, features: torch.Tensor, teacher_forcing: float) -> torch.Tensor:
        sampling = teacher_forcing < 1.0
        if not self.use_graphs or len(tokens) != self.batch_size or not self.optimizer.state:
            return self._eager(tokens, features, teacher_forcing)
        if sampling not in self.graphs:
            try:
                self.graphs[sampling] = self._capture(tokens, features, sampling)
            except RuntimeError as exc:  # a CUDA stack that cannot capture still trains, eagerly
                warnings.warn(f"training continues without CUDA graphs: capturing the step failed ({exc})",
                              PipelineWarning, stacklevel=2)
                self.use_graphs = False
                return self._eager(tokens, features, teacher_forcing)
        graph = self.graphs[sampling]
        graph.tokens.copy_(tokens, non_blocking=True)
        graph.features.copy_(features, non_blocking=True)
        graph.teacher_forcing.fill_(teacher_forcing)
        self.lr.fill_(self.optimizer.param_groups[0]["lr"])
        graph.graph.replay()
        return graph.loss.clone()

    def _loss(self, tokens: torch.Tensor, features: torch.Tensor, teacher_forcing, cache: bool = True
              ) -> torch.Tensor:
        with autocast(self.device, self.precision, cache):
            logits = self.model(features, tokens[:, :-1], teacher_forcing=teacher_forcing)  # (b, T, V)
            return masked_loss(logits.float(), tokens[:, 1:], self.pad_id, self.label_smoothing)

    def _update(self, loss: torch.Tensor) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.optimizer.step()

    def _eager(self, tokens: torch.Tensor, features: torch.Tensor, teacher_forcing: float) -> torch.Tensor:
        # Only as many steps as the batch's longest caption: the columns after it are padding everywhere.
        # (A captured step keeps its fixed shape.)
        longest = int(tokens.ne(self.pad_id).sum(dim=1).max())
        tokens, features = tokens[:, :longest].to(self.device), features.to(self.device, non_blocking=True)
        loss = self._loss(tokens, features, teacher_forcing)
        if self.world.distributed:  # this rank's share of the mean over the global batch's real tokens
            here = (tokens[:, 1:] != self.pad_id).sum().item()
            loss = loss * (here * self.world.size / distributed.total([here], self.world, self.device)[0])
        self.optimizer.zero_grad(set_to_none=True)
        self._update(loss)
        return loss.detach()

    def _capture(self, tokens: torch.Tensor, features: torch.Tensor, sampling: bool) -> _Graph:
        """Capture one whole step for this batch shape. Warm-up passes (forward and backward only, so no
        weight moves) run first on the capture stream, and the random state is put back after them."""
        static = _Graph(torch.cuda.CUDAGraph(), tokens.to(self.device).clone(),
                        features.to(self.device).clone(), torch.ones((), device=self.device),
                        torch.zeros((), device=self.device))
        teacher_forcing = static.teacher_forcing if sampling else 1.0
        rng = torch.cuda.get_rng_state(self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.optimizer.zero_grad(set_to_none=True)
                self._loss(static.tokens, static.features, teacher_forcing, cache=False).backward()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.set_rng_state(rng, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        groups = self.optimizer.param_groups
        rates = [group["lr"] for group in groups]
        for group in groups:  # the graph reads the learning rate from `self.lr`, set before each replay
            group["lr"] = self.lr
        try:
            # thread-local: the next batch is gathered in another thread meanwhile
            with torch.cuda.graph(static.graph, stream=stream, capture_error_mode="thread_local"):
                loss = self._loss(static.tokens, static.features, teacher_forcing, cache=False)
                self._update(loss)
                static.loss.copy_(loss.detach())
        finally:
            for group, rate in zip(groups, rates):
                group["lr"] = rate
        return static
