"""The Cleanup registry: undo callbacks run newest first, also when a test fails half-way.

Everything a lab helper creates is registered in a :class:`Cleanup`.
"""

from __future__ import annotations

import os
import traceback
from typing import Any, Callable


class CleanupError(Exception):
    """One or more cleanup callbacks failed; ``errors`` holds the details."""

    def __init__(self, errors: list[tuple[str, BaseException]]):
        self.errors = errors
        lines = [f"{len(errors)} cleanup step(s) failed:"]
        for what, exc in errors:
            lines.append(f"  {what}: {type(exc).__name__}: {exc}")
        super().__init__("\n".join(lines))


class Cleanup:
    """LIFO registry of undo callbacks.

    ``add(fn, *args, **kwargs)`` registers; ``run()`` calls all of them, newest
    first, keeps going when one raises, and returns the list of
    ``(description, exception)`` it collected (also kept in ``errors``).
    ``run(raise_errors=True)`` raises :class:`CleanupError` instead.
    Usable as a context manager (raises on exit if something failed).
    """

    def __init__(self) -> None:
        self._stack: list[tuple[str, Callable[..., Any], tuple, dict]] = []
        self.errors: list[tuple[str, BaseException]] = []

    def add(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
        what = kwargs.pop("_what", None) or _describe(fn, args)
        self._stack.append((what, fn, args, kwargs))
        return fn

    def __len__(self) -> int:
        return len(self._stack)

    def run(self, raise_errors: bool = False) -> list[tuple[str, BaseException]]:
        errors: list[tuple[str, BaseException]] = []
        while self._stack:
            what, fn, args, kwargs = self._stack.pop()
            try:
                fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - keep cleaning up
                exc.__cleanup_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
                errors.append((what, exc))
        self.errors.extend(errors)
        if raise_errors and errors:
            raise CleanupError(errors)
        return errors

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.run(raise_errors=exc_info[0] is None)


def _describe(fn: Callable[..., Any], args: tuple) -> str:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    shown = ", ".join(repr(a) for a in args)
    return f"{name}({shown})"


def remove_file(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` if it is there (a cleanup step may find it gone already)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
