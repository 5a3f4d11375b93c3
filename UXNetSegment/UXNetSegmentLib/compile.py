"""Compile the network once per process with TorchInductor, falling back to eager PyTorch.

On the CPU the graph is compiled with weight freezing (weights as constants, weight transforms
constant-folded): about 1.4x faster than eager in fp32 with logits equal to ~1e-5. A compiled
network is cached per (network object, its weights, device, precision, memory format); each
new window shape compiles once more (TorchInductor guards on shapes). Set ``UXNET_COMPILE=0``
to switch compilation off.

TorchInductor keeps what it builds on disk and reuses it in later processes (a cold build of the
full-size network takes minutes, a warm one about half a minute). Its default folder is under the
temporary directory, which a reboot empties; the engine moves it to its own cache folder
(``~/.cache/uxnet-segment/torchinductor``) unless ``TORCHINDUCTOR_CACHE_DIR`` is set already.
That reuse needs a graph it can pickle, and oneDNN's pre-packed weight tensors cannot be pickled.
So the fp32 build does not pre-pack: with them its main graph was generated again in every process
(a warm build of 54-60 s instead of 28 s), and their gain per window (-2 % to +8 %) stays inside
the machine's run-to-run noise. Under bf16 autocast pre-packing makes
each window 7% faster and costs only 5 s of build, so fast mode keeps it (``tools/benchmark_build.py``;
BENCHMARKS.md). TorchInductor registers its packing passes once per process, at its first frozen build,
so that build's mode decides for the process (the CLI and the Slicer module's child run one mode each).

Freezing makes the weights constants of the compiled graph (the 3x3x3 ones Winograd-transformed), so
the module's own copy is dead weight: 0.2 GB for the official networks. A build asked to ``release``
them lets TorchInductor discard it (its ``freezing_discard_parameters``); the module's parameters
are then empty placeholders on the ``meta`` device, and only the compiled form can run. Callers
that can load the weights again (the engine's own runs) ask for it; see ``devices.Predictor``.
"""
import contextlib
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
# oneDNN pre-packed weights (see the module's docstring). None: in reduced precision only, as measured;
# ``tools/benchmark_build.py`` forces True or False to measure both sides.
PREPACK_WEIGHTS: Optional[bool] = None
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


def prepack_weights(dtype: Optional[torch.dtype]) -> bool:
    """Whether a frozen CPU build for autocast ``dtype`` (None: fp32) pre-packs weights for oneDNN."""
    return dtype is not None if PREPACK_WEIGHTS is None else PREPACK_WEIGHTS


def frozen_weights(device: torch.device, discard: bool = False, dtype: Optional[torch.dtype] = None):
    """TorchInductor's freezing switched on while Dynamo traces (on the CPU): the weights become constants
    and constant weight transforms are folded. Passing ``options={"freezing": True}`` to ``torch.compile``
    alone no longer does it: Dynamo must see the switch to treat the parameters as constants. Weights are
    pre-packed for oneDNN under bf16 autocast only (:func:`prepack_weights`). ``discard``: the module's own
    weights are dropped once frozen (see the module's docstring)."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config
    return inductor_config.patch({"freezing": True, "freezing_discard_parameters": discard,
                                  "cpp.weight_prepack": prepack_weights(dtype)})


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
        self.release = release and device.type == "cpu"
        self.weights_key: Tuple[int, int] = (0, 0)
        self.forward: Optional[Callable] = None
        self.shapes: Set[Tuple[int, ...]] = set()
        self.failed: Optional[str] = None
        use_persistent_cache()  # before TorchInductor is imported: it fixes its folder then
        reason = compile_unsupported_reason()
        if reason is not None:
            self.failed = reason
            return
        options = {"freezing": True} if device.type == "cpu" else {}
        try:
            compiled = torch.compile(network, dynamic=False, options=options)
        except Exception as exc:  # the compiler can refuse the module outright
            self.failed = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            return

        def forward(x: torch.Tensor) -> torch.Tensor:
            # Every call: a trace Dynamo starts again (a guard failed) freezes too. Only the first build may
            # discard the weights (later traces no longer have them).
            with frozen_weights(device, discard=self.release and not self.shapes, dtype=dtype):
                return compiled(x)

        self.forward = forward

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
