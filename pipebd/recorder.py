"""Per-rank timing: spans on a device clock, measurement windows, and the NVML sampler.

Each rank owns a :class:`Recorder`. A strategy wraps its work in ``recorder.span(phase, block,
step)`` (phases: :data:`pipebd.metrics.PHASES`) and brackets the timed part of its run with
measurement windows (``start_window`` / ``stop_window``); warm-up steps run outside any window
and are not recorded. A window is *pipelined* when its steps overlap across ranks (teacher
relaying): then its first steps include the pipeline's fill, and the epoch time is one fill
and drain plus the steady-state period per step (:func:`pipebd.metrics.window_epoch_time`).

Clocks (DESIGN.md §4): on CPU a span's edges are ``perf_counter`` readings (CPU kernels are
synchronous, so a host timestamp bounds the work). On CUDA they are CUDA events recorded on
the current stream and resolved only after the window has closed: the recorder never
synchronises the device inside a window. (A device-wide sync would also wait on the receives a
relay stage posts ahead, so under NCCL ``tr`` would deadlock at the start of the window and
``tr-dpu``/``ahd`` would lose their overlap.) The one wait, on the window's last event, comes
after the window's end mark.

On CUDA a :class:`NvmlSampler` thread reads NVML's GPU utilisation (``torch.cuda.utilization``,
which needs ``nvidia-ml-py``) every ~75 ms while a window is open; on CPU nothing is sampled and
peak memory is the process's peak RSS.
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable

from .metrics import RankReport

if TYPE_CHECKING:
    import torch

__all__ = ["Recorder", "HostClock", "CudaEventClock", "make_clock", "NvmlSampler", "nvml_reader", "peak_memory_mb"]

log = logging.getLogger("pipebd.recorder")


class HostClock:
    """``perf_counter`` seconds since the clock was made; a mark is its own time."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def host_now(self) -> float:
        return time.perf_counter() - self._t0

    def open(self):
        return self.host_now()

    def mark(self):
        return time.perf_counter() - self._t0

    def close(self, anchor, anchor_host: float, marks: list) -> list[float]:
        return marks


class CudaEventClock:
    """CUDA events on the device's current stream, timed against the window's first event.

    ``mark`` only enqueues an event (no host-device synchronisation). ``close`` runs after the
    window's end mark: it waits for that last event alone (not the device, so receives posted
    ahead on communication streams are not waited on) and turns every mark into seconds on the
    host clock, anchored at the host time the window opened.
    """

    def __init__(self, device: "torch.device", *, event_factory: Callable | None = None):
        import torch

        self.device = device
        self._t0 = time.perf_counter()
        self._event = event_factory or (lambda: torch.cuda.Event(enable_timing=True))
        self._stream = (lambda: torch.cuda.current_stream(device)) if event_factory is None else (lambda: None)

    def host_now(self) -> float:
        return time.perf_counter() - self._t0

    def open(self):
        return self.mark()

    def mark(self):
        e = self._event()
        stream = self._stream()
        e.record() if stream is None else e.record(stream)
        return e

    def close(self, anchor, anchor_host: float, marks: list) -> list[float]:
        if marks:
            marks[-1].synchronize()
        return [anchor_host + anchor.elapsed_time(m) / 1e3 for m in marks]


def make_clock(device: "torch.device | None"):
    """The clock for ``device``: CUDA events on a GPU, ``perf_counter`` elsewhere."""
    if device is not None and device.type == "cuda":
        return CudaEventClock(device)
    return HostClock()


_NVML_NOTED = False


def _nvml_note(rank: int, why: BaseException) -> None:
    """Say once per process that NVML utilisation is not recorded, and why."""
    global _NVML_NOTED
    if _NVML_NOTED:
        return
    _NVML_NOTED = True
    msg = (f"NVML utilisation is not recorded (nvml_utilisation left empty): {type(why).__name__}: {why}. "
           "Install nvidia-ml-py to record it.")
    if rank == 0:
        print(f"[pipebd] note: {msg}", file=sys.stderr)
    log.info(msg)


def nvml_reader(device: "torch.device", rank: int = 0) -> Callable[[], float] | None:
    """A function returning the device's NVML utilisation as a fraction, or ``None`` (with a
    one-time note) when NVML cannot be read here (no ``nvidia-ml-py``, no driver, not CUDA)."""
    if device is None or device.type != "cuda":
        return None
    import torch

    def read() -> float:
        return torch.cuda.utilization(device) / 100.0

    try:
        read()
    except Exception as e:  # noqa: BLE001 — any NVML failure only disables the sampler
        _nvml_note(rank, e)
        return None
    return read


class NvmlSampler:
    """Background thread reading a utilisation counter every ``interval_s`` while ``active()``.

    Only samples taken while a measurement window is open count, so the mean is a
    time-weighted mean over the measured windows. A window shorter than the interval gets
    one sample when it closes (:meth:`window_closed`), so every window is represented.
    The thread is a daemon and never touches the CUDA stream; a read that fails stops it.
    """

    def __init__(self, read: Callable[[], float], active: Callable[[], bool], *, interval_s: float = 0.075,
                 rank: int = 0):
        if not 0 < interval_s <= 1.0:
            raise ValueError(f"interval_s must be in (0, 1] seconds, got {interval_s}")
        self.read = read
        self.active = active
        self.interval_s = interval_s
        self.rank = rank
        self.samples: list[float] = []
        self._in_window = 0  # samples taken in the currently open window
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed = False

    def start(self) -> None:
        if self._thread is None and not self.failed:
            self._thread = threading.Thread(target=self._loop, name=f"pipebd-nvml-{self.rank}", daemon=True)
            self._thread.start()

    def _take(self) -> None:
        try:
            v = float(self.read())
        except Exception as e:  # noqa: BLE001
            self.failed = True
            self._stop.set()
            _nvml_note(self.rank, e)
            return
        with self._lock:
            self.samples.append(v)
            self._in_window += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.active():
                self._take()

    def window_opened(self) -> None:
        with self._lock:
            self._in_window = 0

    def window_closed(self) -> None:
        if not self.failed and self._in_window == 0:
            self._take()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval_s + 1.0)
            self._thread = None

    def mean(self) -> float | None:
        with self._lock:
            return sum(self.samples) / len(self.samples) if self.samples else None


class _Span:
    """``with recorder.span(...)``: two clock marks and one append; a no-op outside a window."""

    __slots__ = ("rec", "phase", "block", "step", "start")

    def __init__(self, rec: "Recorder", phase: str, block: int, step: int):
        self.rec, self.phase, self.block, self.step = rec, phase, block, step

    def __enter__(self):
        self.start = self.rec._clock.mark() if self.rec._measuring else None
        return self

    def __exit__(self, *exc):
        if self.start is not None:
            self.rec._open.append((self.phase, self.block, self.step, self.start, self.rec._clock.mark()))
        return False


class Recorder:
    """Times the phases of one rank on its device's clock (:func:`make_clock`).

    ``span`` and ``measure`` are cheap context managers. Inside a window, spans hold unresolved
    marks; ``stop_window`` resolves them to seconds. On CUDA an :class:`NvmlSampler` runs while
    windows are open (``nvml=False`` turns it off).
    """

    def __init__(self, rank: int, device: "torch.device | None" = None, *, nvml: bool = True,
                 nvml_interval_s: float = 0.075, clock=None):
        self.rank = rank
        self.cuda = device is not None and device.type == "cuda"
        self.device = device
        self.events: list[tuple[str, int, int, float, float]] = []
        self.windows: list[tuple[float, float]] = []
        self.pipelined: list[bool] = []  # per window: do its steps overlap across ranks?
        self.scales: list[float] = []  # per window: the fraction of its epoch time an epoch pays
        self.plan = ""
        self.modes = ""  # the schedule's compute modes (pipebd.modes text; "": fp32 contiguous)
        self._clock = clock if clock is not None else make_clock(device)
        self._measuring = False
        self._open: list = []  # the open window's spans, with unresolved marks
        self._sampler: NvmlSampler | None = None
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(device)
            read = nvml_reader(device, rank) if nvml else None
            if read is not None:
                self._sampler = NvmlSampler(read, lambda: self._measuring, interval_s=nvml_interval_s, rank=rank)
        self._t0_unix = time.time() - self._clock.host_now()

    def span(self, phase: str, block: int = -1, step: int = -1) -> _Span:
        return _Span(self, phase, block, step)

    def start_window(self, *, pipelined: bool = False, scale: float = 1.0) -> None:
        """Open a timed window; a run's measured wall time is the sum of its windows.

        ``pipelined``: the window's steps overlap across ranks, so its first steps include a
        pipeline fill that an epoch pays once (not once per measured step). ``scale``: the
        fraction of the window's epoch time an epoch pays (the ``cache`` teacher pass: ``1/E``)."""
        if self._measuring:
            raise RuntimeError("a measurement window is already open")
        self._anchor_host = self._clock.host_now()
        self._anchor = self._clock.open()
        self._open = []
        self.pipelined.append(pipelined)
        self.scales.append(float(scale))
        if self._sampler is not None:
            self._sampler.window_opened()
            self._sampler.start()
        self._measuring = True

    def stop_window(self) -> None:
        if not self._measuring:
            return
        end = self._clock.mark()
        self._measuring = False
        spans, self._open = self._open, []
        marks = [m for (_p, _b, _s, a, z) in spans for m in (a, z)] + [end]
        times = self._clock.close(self._anchor, self._anchor_host, marks)
        for k, (p, b, s, _a, _z) in enumerate(spans):
            self.events.append((p, b, s, times[2 * k], times[2 * k + 1]))
        self.windows.append((self._anchor_host, times[-1]))
        if self._sampler is not None:
            self._sampler.window_closed()

    def measure(self):
        """``with recorder.measure():`` — a timed window around the block."""
        return _Window(self)

    @property
    def measuring(self) -> bool:
        return self._measuring

    def close(self) -> None:
        """Stop the NVML sampler thread (idempotent; :meth:`report` calls it)."""
        if self._sampler is not None:
            self._sampler.stop()

    def report(self) -> RankReport:
        self.close()
        return RankReport(rank=self.rank, wall_s=sum(e - s for s, e in self.windows), events=list(self.events),
                          peak_memory_mb=peak_memory_mb(self.device),
                          nvml_utilisation=self._sampler.mean() if self._sampler is not None else None,
                          plan=self.plan, extra={"windows": list(self.windows), "pipelined": list(self.pipelined),
                                                     "scales": list(self.scales), "modes": self.modes},
                          t0_unix=self._t0_unix)


class _Window:
    __slots__ = ("rec",)

    def __init__(self, rec: Recorder):
        self.rec = rec

    def __enter__(self):
        self.rec.start_window()
        return self.rec

    def __exit__(self, *exc):
        self.rec.stop_window()
        return False


def peak_memory_mb(device: "torch.device | None") -> float:
    """``max_memory_allocated`` on CUDA; the process's peak RSS on CPU (MiB)."""
    if device is not None and device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
