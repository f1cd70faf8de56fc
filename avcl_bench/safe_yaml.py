"""YAML from files the suite did not write itself (a colleague's run folder, a manifest): parsed
safely (no tags that build objects) and refused when its aliases expand it past a size no config
of the suite reaches, so a kilobyte "billion laughs" file is one clear error, not gigabytes of
memory in whatever walks the result later (a report, a sweep, a config hash)."""

from __future__ import annotations

import yaml

#: the most nodes a document may hold once every alias is expanded (a resolved run config holds a
#: few hundred; a manifest's class list a few thousand)
MAX_EXPANDED_NODES = 1_000_000


class YAMLTooLarge(yaml.YAMLError):
    """A document whose aliases expand it past :data:`MAX_EXPANDED_NODES`."""


def expanded_size(node: yaml.Node, limit: int = MAX_EXPANDED_NODES) -> int:
    """Nodes of ``node`` with every alias expanded, counted without expanding (shared nodes are
    counted once per reference, from a memo); stops counting past ``limit``."""
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        memo[key] = limit + 1  # a node that (through an alias) contains itself is too large
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        else:
            total = 1
        memo[key] = min(total, limit + 1)
        return memo[key]

    return size(node)


def safe_load(text: str):
    """``yaml.safe_load`` of ``text``, refusing (:class:`YAMLTooLarge`) a document that its
    aliases expand past :data:`MAX_EXPANDED_NODES` nodes, or one nested too deep to parse."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if expanded_size(node) > MAX_EXPANDED_NODES:
                raise YAMLTooLarge(
                    f"its aliases expand it to more than {MAX_EXPANDED_NODES} nodes (a YAML alias bomb?)"
                )
            return loader.construct_document(node)
        except RecursionError:
            raise YAMLTooLarge("it is nested too deep to read") from None
    finally:
        loader.dispose()


def problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error (PyYAML's own message spans four, with the source quoted): what
    is wrong and the line, e.g. "could not determine a constructor for the tag '...' (line 2)"."""
    text = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f"{text} (line {mark.line + 1})" if mark is not None else text
