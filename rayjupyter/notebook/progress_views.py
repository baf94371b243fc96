"""Views of a ProgressModel: an ipywidgets panel in a kernel, a text bar elsewhere."""

from __future__ import annotations

import sys
from typing import IO, Any

from rayjupyter.notebook import templates
from rayjupyter.notebook.progress_model import ProgressModel, Row, format_elapsed, row_summary

BAR_WIDTH = 30


class TextProgressView:
    """A bar per function on one line set, redrawn in place on a terminal, else per change."""

    def __init__(self, model: ProgressModel, stream: IO[str] | None = None) -> None:
        self.model = model
        self.stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""
        self._closed = False

    def lines(self) -> list[str]:
        model = self.model
        width = max((len(row.name) for row in model.rows), default=4)
        out = []
        for row in model.rows:
            filled = BAR_WIDTH * row.finished // row.total if row.total else BAR_WIDTH
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            out.append(f"{row.name:<{width}} [{bar}] {row_summary(row)}")
        out.append(f"{'':<{width}}  {format_elapsed(model.elapsed())} elapsed")
        return out

    def render(self) -> None:
        if self._closed:
            return
        text = "\n".join(self.lines())
        if not self._tty:
            body = text.rsplit("\n", 1)[0]  # the clock alone changing is no news in a log
            if body == self._last:
                return
            self._last = body
            self.stream.write(text + "\n")
        else:
            up = f"\x1b[{self._last.count(chr(10)) + 1}F\x1b[J" if self._last else ""
            self._last = text
            self.stream.write(up + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self._closed:
            self.render()
            self._closed = True


class WidgetProgressView:
    """One IntProgress bar per function, with counts and the elapsed time, as a widget."""

    def __init__(self, model: ProgressModel) -> None:
        import ipywidgets as w

        self.model = model
        self._w = w
        self.header = w.HTML(value=self._header())
        self.bars: dict[str, Any] = {}
        self.labels: dict[str, Any] = {}
        self.boxes: dict[str, Any] = {}
        self.widget = w.VBox([self.header, *[self._row_box(row) for row in model.rows]])
        self.widget.add_class("rayjupyter-progress")

    def _row_box(self, row: Row) -> Any:
        w = self._w
        bar = w.IntProgress(
            value=row.finished,
            min=0,
            max=max(row.total, 1),
            description=row.name,
            layout=w.Layout(width="60%"),
            style={"description_width": "initial"},
        )
        label = w.HTML(value=templates.progress_counts(row))
        self.bars[row.name] = bar
        self.labels[row.name] = label
        box = self.boxes[row.name] = w.HBox([bar, label])
        return box

    def _header(self) -> str:
        model = self.model
        return templates.progress_header(
            model.finished, model.total, model.failed, model.elapsed(), model.complete
        )

    def render(self) -> None:
        rows = self.model.rows
        current = {row.name for row in rows}
        # rows renamed (names an engine learned late): their widgets take the new names
        orphans = [name for name in self.bars if name not in current]
        for row in rows:
            bar = self.bars.get(row.name)
            if bar is None and orphans:
                self._rename(orphans.pop(0), row.name)
                bar = self.bars[row.name]
            elif bar is None:  # the model grew (a joblib call submits as it goes)
                self.widget.children = (*self.widget.children, self._row_box(row))
                bar = self.bars[row.name]
            if bar.max != max(row.total, 1):
                bar.max = max(row.total, 1)
            bar.value = row.finished
            bar.bar_style = (
                "danger" if row.failed else ("success" if row.finished == row.total else "")
            )
            self.labels[row.name].value = templates.progress_counts(row)
        for name in orphans:  # rows merged into others
            box = self.boxes.pop(name)
            del self.bars[name], self.labels[name]
            self.widget.children = tuple(c for c in self.widget.children if c is not box)
        self.header.value = self._header()

    def _rename(self, old: str, new: str) -> None:
        self.bars[new] = self.bars.pop(old)
        self.labels[new] = self.labels.pop(old)
        self.boxes[new] = self.boxes.pop(old)
        self.bars[new].description = new

    def close(self) -> None:
        self.render()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
