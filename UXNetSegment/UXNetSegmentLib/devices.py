"""Device choice, precision and the window predictor (compile, fast mode, TTA, CUDA out-of-memory fallback)."""
import os
from typing import Callable, List, Optional, Tuple

import torch

from .allocator import HeapTrimmer, network_heap
from .compile import ENV_SWITCH, CompiledNetwork, built_for, compile_enabled, compiled_for, weights_released
from .cpu_layout import keep_channels_last, prepare_for_compile, to_channels_last
from .errors import UXNetError
from .network import UXNet
from .progress import ProgressCallback, report
from .switches import switched_on

# Networks smaller than this are not compiled unless asked (UXNET_COMPILE=1): compiling takes
# 10-60 s, which only pays back on official-size models (tens of millions of parameters).
AUTO_COMPILE_MIN_PARAMS = 5_000_000
# CPUs whose compiled (frozen) UX-Net was measured faster than eager: x1.39 on an
# AVX-512 EPYC. On an AVX2-only EPYC the compiled window was slower (BENCHMARKS.md), so it stays eager.
AUTO_COMPILE_CPU_CAPABILITIES = ("AVX512",)
CHANNELS_LAST_SWITCH = "UXNET_CHANNELS_LAST"
WINOGRAD_SWITCH = "UXNET_WINOGRAD"


def cpu_capability() -> str:
    """PyTorch's CPU kernel level here: 'AVX512', 'AVX2', 'DEFAULT', ... ('' if unknown)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - very old torch
        return ""


def cpu_channels_last_enabled() -> bool:
    """Channels-last eager CPU inference (default on; ``UXNET_CHANNELS_LAST=0`` turns it off)."""
    return switched_on(CHANNELS_LAST_SWITCH)


def winograd_enabled() -> bool:
    """Winograd 3x3x3 convolutions in the compiled fp32 CPU path (default on; ``UXNET_WINOGRAD=0`` turns it off)."""
    return switched_on(WINOGRAD_SWITCH)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UXNetError("--device cuda was asked for but no CUDA GPU is usable here; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UXNetError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(device)}"
    return f"CPU ({torch.get_num_threads()} threads)"


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix support (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The reduced precision fast mode uses on ``device``, or None where it would not be faster."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def parameter_count(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def want_compile(network: torch.nn.Module, requested: Optional[bool] = None,
                 device: Optional[torch.device] = None) -> bool:
    """Compile? ``requested`` wins; else ``UXNET_COMPILE`` (0 never, 1 always); else large networks on an
    AVX-512 CPU (where it was measured faster).

    On CUDA the automatic choice is eager (cuDNN is already near its floor and the GPU path is
    not measured here); ``UXNET_COMPILE=1`` turns TorchInductor on there too.
    """
    if requested is not None:
        return bool(requested) and hasattr(torch, "compile")
    if not compile_enabled():
        return False
    if os.environ.get(ENV_SWITCH, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    if device is not None and device.type != "cpu":
        return False
    if cpu_capability() not in AUTO_COMPILE_CPU_CAPABILITIES:
        return False
    return parameter_count(network) >= AUTO_COMPILE_MIN_PARAMS


FLIPS: List[Tuple[int, ...]] = [(), (2,), (3,), (4,)]


class Predictor:
    """``(B, 1, X, Y, Z)`` CPU float32 windows -> ``(B, C, X, Y, Z)`` CPU float32 logits.

    Exact mode runs fp32. Fast mode autocasts to bf16 (CPU with AVX512-BF16/AMX) or fp16/bf16 (CUDA,
    with channels-last and cuDNN autotune). ``tta`` averages the logits over flips of each window.
    ``compile`` (None: automatic, see :func:`want_compile`) runs the network through TorchInductor,
    built once per process per network, precision and window shape; the build is reported as the
    ``compile`` progress stage, and any compiler failure falls back to eager with a warning.
    ``reload`` (a function giving the same network, freshly loaded) lets a frozen CPU build (fast mode's)
    release the module's own weights (0.2 GB for the official networks; the compiled graph keeps its frozen
    copy), and is called if eager PyTorch is needed afterwards.
    """

    def __init__(self, network: torch.nn.Module, device: torch.device, fast: bool = False, tta: bool = False,
                 progress: Optional[ProgressCallback] = None, compile: Optional[bool] = None,
                 dtype: Optional[torch.dtype] = None, reload: Optional[Callable[[], torch.nn.Module]] = None):
        self.device = device
        self.reload = reload
        # ``dtype`` forces an autocast precision (accuracy studies); without native support it is emulated.
        self.dtype = dtype if dtype is not None else (fast_dtype(device) if fast else None)
        self.flips = FLIPS if tta else [()]
        self.progress = progress
        self.channels_last = device.type == "cuda" and self.dtype is not None
        wants_compile = want_compile(network, compile, device)
        released = weights_released(network)
        if released and not (wants_compile and built_for(network, device, self.dtype, self.channels_last)):
            network, released = self._reloaded(), False  # its compiled form does not fit this request
        # A released network stays as it is: its compiled form is for this device.
        self.network = network if released else network.to(device).eval()
        if fast and self.dtype is None and dtype is None:
            report(progress, "warning", 0.0, "fast mode needs bf16 support (AVX512-BF16 or AMX) on this CPU; "
                                             "running exact fp32")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(fast)
            if self.channels_last:
                self.network = self.network.to(memory_format=torch.channels_last_3d)
        self.heap = HeapTrimmer()
        self.built_now = False
        self.compiled: Optional[CompiledNetwork] = None
        if wants_compile:
            if device.type == "cpu":
                prepare_for_compile(self.network, winograd=winograd_enabled())
            self.compiled = compiled_for(self.network, device, self.dtype, self.channels_last,
                                         release=reload is not None)
            if self.compiled.failed is not None:
                self._warn_eager(self.compiled.failed)
                self.compiled = None
                self._need_weights()
        # Eager CPU: windows travel channels-last through the network (same fp32 arithmetic, fewer reorders).
        # Only for UX-Net itself: its layout-keeping norms work in place, which is safe in its MONAI blocks.
        self.cpu_channels_last = (device.type == "cpu" and self.dtype is None and self.compiled is None
                                  and isinstance(self.network, UXNet) and cpu_channels_last_enabled())
        if self.cpu_channels_last:
            keep_channels_last(self.network)

    @property
    def compiling(self) -> bool:
        """True while the compiled path is in use (False after a fallback to eager)."""
        return self.compiled is not None and self.compiled.failed is None

    def _reloaded(self) -> torch.nn.Module:
        """The network with its weights, for eager PyTorch after its compiled build released them."""
        if self.reload is None:
            raise UXNetError("this network's weights were handed to its compiled form, which cannot run this "
                             "request; load the network again (or pass reload=) to run it")
        return self.reload().to(self.device).eval()

    def _need_weights(self) -> None:
        """Before eager PyTorch: load the weights again if a compiled build released them."""
        if weights_released(self.network):
            self.network = self._reloaded()

    def _warn_eager(self, why: str) -> None:
        report(self.progress, "warning", 0.0, f"could not compile the network ({why}); running eager PyTorch")

    def _run(self, forward: Callable, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.dtype is None:
                return forward(x)
            with torch.autocast(self.device.type, dtype=self.dtype):
                return forward(x).float()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        compiled = self.compiled
        if self.cpu_channels_last:
            with network_heap():
                return self._run(self.network, to_channels_last(x))
        if compiled is not None and compiled.usable(tuple(x.shape)):
            if compiled.is_built(tuple(x.shape)):
                with network_heap():
                    return self._run(compiled.forward, x)
            report(self.progress, "compile", 0.0, "compiling the network (once per process)…")
            try:
                out, seconds = compiled.build(x, self._run)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception:
                self._warn_eager(compiled.failed or "compiler error")
                self.compiled = None
            else:
                report(self.progress, "compile", 1.0, f"compiled in {seconds:.0f} s")
                self.built_now = True
                return out
        self._need_weights()
        with network_heap():
            return self._run(self.network, x)

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        x = windows.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        out = None
        for dims in self.flips:
            y = self._forward(x.flip(dims) if dims else x)
            y = y.flip(dims) if dims else y
            out = y if out is None else out + y
        out = out / len(self.flips) if len(self.flips) > 1 else out
        out = out.float().cpu()
        if self.device.type == "cpu":
            del x, y
            if self.built_now:  # the build's own leftovers are not the windows' baseline
                self.built_now = False
            else:
                self.heap.after_window()
        return out


def run_with_fallback(run: Callable[[torch.device, int], object], device: torch.device, batch_size: int,
                      progress: Optional[ProgressCallback] = None):
    """Call ``run(device, batch)``; on CUDA out-of-memory halve the batch, then fall back to the CPU."""
    while True:
        try:
            return run(device, batch_size)
        except torch.cuda.OutOfMemoryError:
            if device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size //= 2
                report(progress, "warning", 0.0, f"GPU out of memory; retrying with {batch_size} window(s) at a time")
            else:
                report(progress, "warning", 0.0, "GPU out of memory even with one window; falling back to the CPU")
                device = torch.device("cpu")
