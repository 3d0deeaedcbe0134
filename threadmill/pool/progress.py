"""The progress bar of `--exit-empty`, shown only when a terminal is attached."""

from typing import TextIO

WIDTH = 30


class DrainProgress:
    """Draw how much of the queues has been drained, on one terminal line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.peak = 0
        self.drawn = False

    def update(self, left: int) -> None:
        if not self.enabled:
            return
        self.peak = max(self.peak, left)
        done = self.peak - left
        filled = WIDTH * done // self.peak if self.peak else WIDTH
        bar = "#" * filled + "-" * (WIDTH - filled)
        self.stream.write(f"\rDraining [{bar}] {done}/{self.peak} tasks, {left} left ")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
