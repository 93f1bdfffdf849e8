"""The demo's numbered stages, each printed with the time elapsed since the demo started."""
import time

__all__ = ["Progress"]


class Progress:
    """Numbered stages with the elapsed time since the demo started; ``times`` = seconds per stage."""

    def __init__(self, total):
        self.total, self.start, self.times = total, time.time(), {}

    def elapsed(self):
        return time.strftime("%H:%M:%S", time.gmtime(time.time() - self.start))

    def stage(self, number, title):
        return _Stage(self, number, title)


class _Stage:
    def __init__(self, progress, number, title):
        self.p, self.number, self.title = progress, number, title

    def __enter__(self):
        self.t0 = time.time()
        print(f"\n=== [demo {self.number}/{self.p.total}] {self.title}  (elapsed {self.p.elapsed()}) ===", flush=True)
        return self

    def __exit__(self, exc_type, *_):
        seconds = time.time() - self.t0
        self.p.times[self.title] = round(seconds, 1)
        status = "failed" if exc_type else "done"
        print(f"=== [demo {self.number}/{self.p.total}] {status} in {seconds:.0f} s  (elapsed {self.p.elapsed()}) ===",
              flush=True)
