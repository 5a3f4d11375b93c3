"""Compile the network once per process with TorchInductor, falling back to eager PyTorch.

A compiled network is cached per (network object, its weights, device, precision, memory format); each
new window shape compiles once more (TorchInductor guards on shapes). Set ``UXNET_COMPILE=0`` to switch
compilation off.

TorchInductor keeps what it builds on disk and reuses it in later processes (a cold build of the
full-size network takes a minute or more, a warm one 12-17 s). Its default folder is under the
temporary directory, which a reboot empties; the engine moves it to its own cache folder
(``~/.cache/uxnet-segment/torchinductor``) unless ``TORCHINDUCTOR_CACHE_DIR`` is set already.

Exact mode (fp32) takes the weights as inputs of the compiled graph. TorchInductor's weight freezing
(weights as constants, weight transforms folded) gave bit-identical logits, but a frozen graph bypasses
the disk cache of the traced and partitioned graph (AOTAutograd's), so every process traced it again: a
warm build of 27 s instead of 12 s (``tools/benchmark_build.py``; BENCHMARKS.md, section 000). The price:
the Winograd weight transforms are computed in each window, about 0.17 s, so the unfrozen build wins up
to about 100 windows and loses about 3.5 % on a 600-window volume.

Fast mode (bf16 autocast) freezes: oneDNN's pre-packed weights, which only a frozen graph can have, make
each window 6-7 % faster for 5-10 s more build. TorchInductor registers its packing passes once per
process, at its first frozen build. Pre-packed tensors cannot be pickled, so that graph is generated
again in each process. A frozen graph keeps its own copy of the weights, so the module's own is dead weight
(0.2 GB for the official networks): a build asked to ``release`` it lets TorchInductor discard it (its
``freezing_discard_parameters``); the module's parameters are then empty placeholders on the ``meta``
device, and only the compiled form can run. Callers that can load the weights again (the engine's own
runs) ask for it; see ``devices.Predictor``.
"""
import os
import sys
import time
import weakref
from typing import Callable, Dict, Optional, Set, Tuple

import torch

from .catalogue import cache_dir
from .switches import switched_on

ENV_SWITCH = "UXNET_COMPILE"
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# Frozen weights, and with them oneDNN's pre-packed ones (see the module's docstring). None: in reduced
# precision only, as measured; ``tools/benchmark_build.py`` forces True or False to measure both sides.
FREEZE_WEIGHTS: Optional[bool] = None
# Past this many failed/odd shapes we stop asking Dynamo to recompile and stay eager.
MAX_SHAPES = 8


def compile_enabled() -> bool:
    """False when ``UXNET_COMPILE`` is 0/false/no/off, or torch has no ``torch.compile``."""
    return switched_on(ENV_SWITCH) and hasattr(torch, "compile")


def is_compiling() -> bool:
    """True while TorchDynamo traces the caller (modules pick their compile-friendly forms then)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def use_persistent_cache() -> Optional[str]:
    """Point TorchInductor's on-disk cache at the engine's cache folder, unless a folder is chosen already or
    ours cannot be created (then TorchInductor's default stays); returns the folder in use, if known."""
    if INDUCTOR_CACHE_ENV not in os.environ:
        folder = cache_dir() / "torchinductor"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        if os.access(str(folder), os.W_OK):
            os.environ[INDUCTOR_CACHE_ENV] = str(folder)
    return os.environ.get(INDUCTOR_CACHE_ENV)


def freezes(device: torch.device, dtype: Optional[torch.dtype]) -> bool:
    """Whether a build for ``device`` and autocast ``dtype`` (None: fp32) freezes its weights: on the CPU, in
    reduced precision (:data:`FREEZE_WEIGHTS` overrides)."""
    if device.type != "cpu":
        return False
    return dtype is not None if FREEZE_WEIGHTS is None else FREEZE_WEIGHTS


def frozen_weights(discard: bool = False):
    """TorchInductor's freezing switched on while Dynamo traces: the weights become constants, constant
    weight transforms are folded, and convolution weights are pre-packed for oneDNN. Passing
    ``options={"freezing": True}`` to ``torch.compile`` alone no longer does it: Dynamo must see the switch
    to treat the parameters as constants. ``discard``: the module's own weights are dropped once frozen (see
    the module's docstring)."""
    import torch._inductor.config as inductor_config
    return inductor_config.patch({"freezing": True, "freezing_discard_parameters": discard,
                                  "cpp.weight_prepack": True})


def weights_released(network: torch.nn.Module) -> bool:
    """True once a compiled build discarded ``network``'s own weights (only its compiled form can run)."""
    return any(p.is_meta for p in network.parameters())


def compile_unsupported_reason() -> Optional[str]:
    """Why compiling cannot work here (checked without trying), or None."""
    if sys.platform.startswith("win"):
        return "TorchInductor on Windows needs the MSVC compiler"
    try:
        import torch._dynamo  # noqa: F401
        import torch._inductor.config  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the torch build
        return f"torch.compile is unavailable ({type(exc).__name__})"
    return None


_RELEASED_KEYS: "weakref.WeakKeyDictionary[torch.nn.Module, Tuple[int, int]]" = weakref.WeakKeyDictionary()


def weights_key(network: torch.nn.Module) -> Tuple[int, int]:
    """Changes whenever a parameter or buffer is replaced or modified in place (so a frozen graph is stale);
    a network whose weights were released keeps the key they had."""
    if weights_released(network):
        return _RELEASED_KEYS.get(network, (0, 0))
    ptrs, versions = 0, 0
    for t in list(network.parameters()) + list(network.buffers()):
        ptrs = hash((ptrs, t.data_ptr()))
        versions += t._version
    return ptrs, versions


class CompiledNetwork:
    """A compiled forward for one network/device/precision/layout; remembers which shapes are built."""

    def __init__(self, network: torch.nn.Module, device: torch.device, release: bool = False,
                 dtype: Optional[torch.dtype] = None):
        self.network = network
        self.device = device
        self.freezes = freezes(device, dtype)
        self.release = release and self.freezes
        self.weights_key: Tuple[int, int] = (0, 0)
        self.forward: Optional[Callable] = None
        self.shapes: Set[Tuple[int, ...]] = set()
        self.failed: Optional[str] = None
        use_persistent_cache()  # before TorchInductor is imported: it fixes its folder then
        reason = compile_unsupported_reason()
        if reason is not None:
            self.failed = reason
            return
        options = {"freezing": True} if self.freezes else {}
        try:
            compiled = torch.compile(network, dynamic=False, options=options)
        except Exception as exc:  # the compiler can refuse the module outright
            self.failed = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            return

        def frozen_forward(x: torch.Tensor) -> torch.Tensor:
            # Every call: a trace Dynamo starts again (a guard failed) freezes too. Only the first build may
            # discard the weights (later traces no longer have them).
            with frozen_weights(discard=self.release and not self.shapes):
                return compiled(x)

        self.forward = frozen_forward if self.freezes else compiled

    def is_built(self, shape: Tuple[int, ...]) -> bool:
        return tuple(shape) in self.shapes

    def usable(self, shape: Tuple[int, ...]) -> bool:
        return self.failed is None and (self.is_built(shape) or len(self.shapes) < MAX_SHAPES)

    def build(self, x: torch.Tensor, run: Callable[[Callable, torch.Tensor], torch.Tensor]) -> Tuple[torch.Tensor, float]:
        """Compile for ``x``'s shape by running it once; returns (output, seconds). Raises on failure."""
        start = time.perf_counter()
        try:
            out = run(self.forward, x)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            raise
        self.shapes.add(tuple(x.shape))
        if self.release and weights_released(self.network):
            _RELEASED_KEYS[self.network] = self.weights_key  # the cache still finds this build
        return out, time.perf_counter() - start

    def built_any(self) -> bool:
        return self.failed is None and bool(self.shapes)


_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, Dict[tuple, CompiledNetwork]]" = weakref.WeakKeyDictionary()


def _cache_key(network: torch.nn.Module, device: torch.device, dtype: Optional[torch.dtype],
               channels_last: bool) -> tuple:
    return (device.type, device.index, str(dtype), channels_last, weights_key(network))


def compiled_for(network: torch.nn.Module, device: torch.device, dtype: Optional[torch.dtype],
                 channels_last: bool, release: bool = False) -> CompiledNetwork:
    """The process-wide compiled form of ``network`` (created on first use, never twice). ``release``: its
    first CPU build may discard the module's own weights (callers that can load them again)."""
    per_net = _CACHE.setdefault(network, {})
    key = _cache_key(network, device, dtype, channels_last)
    entry = per_net.get(key)
    if entry is None:
        # A stale entry (old weights) would keep the old frozen constants alive: drop it.
        for old in [k for k in per_net if k[:4] == key[:4]]:
            del per_net[old]
        entry = CompiledNetwork(network, device, release=release and not weights_released(network), dtype=dtype)
        entry.weights_key = key[4]
        per_net[key] = entry
    return entry


def built_for(network: torch.nn.Module, device: torch.device, dtype: Optional[torch.dtype],
              channels_last: bool) -> bool:
    """Whether a compiled form of ``network`` for this device/precision/layout is built and usable."""
    entry = _CACHE.get(network, {}).get(_cache_key(network, device, dtype, channels_last))
    return entry is not None and entry.built_any()


def clear_cache() -> None:
    """Forget every compiled network (tests; frees the frozen weight copies)."""
    _CACHE.clear()
    try:
        torch._dynamo.reset()
    except Exception:  # pragma: no cover
        pass
