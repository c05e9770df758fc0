"""Load YAML into spec models, reporting every problem with file, line, column, field path and what is valid."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from sovra.core.errors import SpecError, SpecIssue

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves dates as strings, so a bad date is a validation error, not a crash."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class Document:
    """A parsed YAML document plus the position of every node, keyed by its path."""

    def __init__(self, file: str, data: Any, marks: dict[Loc, tuple[int, int]]):
        self.file, self.data, self.marks = file, data, marks

    def issue(self, loc: Loc, message: str) -> SpecIssue:
        """An issue at the nearest known position of `loc` (walking up to a parent if needed)."""
        probe = tuple(loc)
        while probe not in self.marks and probe:
            probe = probe[:-1]
        line, col = self.marks.get(probe, (None, None))
        return SpecIssue(self.file, line, col, _dotted(loc), message)


def parse_documents(text: str, file: str) -> list[Document]:
    """Parse every YAML document in `text`, or raise SpecError pointing at the syntax problem."""
    loader = _Loader(text)
    docs: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            marks: dict[Loc, tuple[int, int]] = {}
            issues: list[SpecIssue] = []
            data = _construct(loader, node, (), marks, issues, file)
            if issues:
                raise SpecError(issues)
            docs.append(Document(file, data, marks))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise SpecError([SpecIssue(file, mark.line + 1 if mark else None, mark.column + 1 if mark else None, "",
                                   f"YAML syntax: {msg} (check indentation and quoting)")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecIssue(file, None, None, "", f"YAML syntax: {exc}")]) from None
    finally:
        loader.dispose()
    return docs


def _construct(loader: _Loader, node: yaml.Node, loc: Loc, marks: dict, issues: list, file: str) -> Any:
    marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                issues.append(SpecIssue(file, key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                                        _dotted((*loc, key)), "duplicate key; each key may appear once"))
                continue
            marks[(*loc, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _construct(loader, value_node, (*loc, key), marks, issues, file)
            marks[(*loc, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, n, (*loc, i), marks, issues, file) for i, n in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def validate(model: type[M], doc: Document, *, prepare: Callable[[Any, Document], list[SpecIssue]] | None = None) -> M:
    """Validate one document against `model`, translating every pydantic error into a located, helpful issue."""
    issues = prepare(doc.data, doc) if prepare else []
    if not isinstance(doc.data, Mapping):
        raise SpecError([doc.issue((), f"expected a mapping with the keys of {model.__name__}, "
                                       f"got {type(doc.data).__name__}")])
    try:
        result = model.model_validate(doc.data)
    except ValidationError as exc:
        issues += [doc.issue(tuple(err["loc"]), _explain(model, err, doc.data)) for err in exc.errors()]
        raise SpecError(sorted(issues, key=lambda i: (i.line or 0, i.column or 0))) from None
    if issues:
        raise SpecError(issues)
    return result


def load(model: type[M], path: str | Path, *, prepare: Callable[[Any, Document], list[SpecIssue]] | None = None) -> M:
    """Read `path` and validate its single document as `model`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([SpecIssue(str(path), None, None, "", f"cannot read file: {exc.strerror or exc}")]) from None
    docs = parse_documents(text, str(path))
    if len(docs) != 1:
        raise SpecError([SpecIssue(str(path), None, None, "", f"expected one YAML document, found {len(docs)}")])
    return validate(model, docs[0], prepare=prepare)


def _explain(model: type[BaseModel], err: Mapping[str, Any], data: Any) -> str:
    loc: Loc = tuple(err["loc"])
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        key = str(loc[-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key; {hint}valid keys: {', '.join(allowed)}"
    if kind == "missing":
        described = _describe(model, loc)
        return "required field is missing" + (f": {described}" if described else "")
    if kind == "string_pattern_mismatch":
        described = _describe(model, loc)
        return f"{err.get('input')!r} is not valid here" + (f": {described}" if described else f" ({msg})")
    if kind.startswith(("date_", "datetime_")):
        return f"{msg}; expected a date like 2027-06-30 (got {err.get('input')!r})"
    msg = msg.removeprefix("Value error, ")
    got = err.get("input")
    if kind not in ("value_error", "assertion_error") and not isinstance(got, (dict, list)):
        return f"{msg} (got {got!r})"
    return msg


def _describe(model: type[BaseModel], loc: Loc) -> str | None:
    """The description of the field at `loc`, which says what a valid value looks like."""
    parent: Any = model
    for part in loc[:-1]:
        parent = _field_type(parent, part)
    parent = _unwrap(parent)
    if isinstance(parent, type) and issubclass(parent, BaseModel):
        for name, field in parent.model_fields.items():
            if loc[-1] in (name, field.alias):
                return field.description
    return None


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """Keys valid at `loc` inside `model`, found by walking field annotations (aliases as users write them)."""
    current: Any = model
    for part in loc:
        current = _field_type(current, part)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _field_type(tp: Any, part: str | int) -> Any:
    tp = _unwrap(tp)
    if isinstance(part, int):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return _unwrap(args[0]) if args else None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, field in tp.model_fields.items():
            if part in (name, field.alias):
                return _unwrap(field.annotation)
    return None


def _unwrap(tp: Any) -> Any:
    """Strip Optional/Annotated to the model or container inside."""
    while True:
        origin = get_origin(tp)
        if origin is typing.Annotated:
            tp = get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            inner = [a for a in get_args(tp) if a is not type(None)]
            tp = inner[0] if len(inner) == 1 else tp
            if len(inner) != 1:
                return tp
        else:
            return tp


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
