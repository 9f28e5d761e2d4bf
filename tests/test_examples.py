"""First contact: every README Python block and every example runs as written, every docstring example runs as
a doctest, and the public ``__all__`` of each module lists the names they use.

The README blocks are executed verbatim (each is a complete program); the examples run their ``main`` at tiny
sizes and the checks below read what they return (the identities they demonstrate, not just "it ran").
"""

from __future__ import annotations

import ast
import doctest
import importlib
import re
import runpy
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCTEST_FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS  # as [tool.pytest.ini_options] doctest_optionflags
PACKAGES = ("jgrpo", "analysis")


def readme_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def example_paths() -> list[Path]:
    return sorted((ROOT / "examples").glob("*.py"))


def module_names() -> list[str]:
    """Every module of jgrpo and analysis, as dotted names (from the files: nothing imported at collection)."""
    names = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def modules_with_doctests() -> list[str]:
    out = []
    for name in module_names():
        rel = Path(*name.split("."))
        path = ROOT / (str(rel) + ".py") if (ROOT / (str(rel) + ".py")).exists() else ROOT / rel / "__init__.py"
        if ">>> " in path.read_text():
            out.append(name)
    return out


# ----------------------------------------------------------------------------- README


def test_readme_has_the_documented_blocks():
    blocks = readme_blocks()
    assert len(blocks) >= 2, "the README's Python blocks went missing"
    assert any("jgrpo.loss" in b for b in blocks) and any("prefix.decompose" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_block_runs_as_written(index, capsys):
    code = readme_blocks()[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": f"readme_block_{index}"})
    assert capsys.readouterr().out.strip(), "every README block prints what it computes"


# ----------------------------------------------------------------------------- examples


# tiny sizes: compiles dominate, so each example keeps its structure and shrinks its loops
TINY = {
    "loss_drop_in": dict(iterations=3, prompts=2, group=4, inner_steps=2),
    "decompose_own_model": dict(width=8),
    "momentum_aware_chain": dict(inner_steps=8),
}


def test_every_example_is_exercised():
    assert sorted(p.stem for p in example_paths()) == sorted(TINY)


def _run_example(name: str) -> dict:
    namespace = runpy.run_path(str(ROOT / "examples" / f"{name}.py"), run_name=f"example_{name}")
    return namespace["main"](verbose=False, **TINY[name])


def test_example_loss_drop_in():
    out = _run_example("loss_drop_in")
    history = out["history"]
    assert len(history) == TINY["loss_drop_in"]["iterations"]
    for h in history:
        assert all(np.isfinite(v) for v in h.values())
        assert 0.0 <= h["reward"] <= 1.0 and 0.0 <= h["clip_frac_high"] <= 1.0
    # iteration 0 starts at pi_old = pi_ref: the first-step loss of grpo is beta * R = 0 there (Prop. 4)
    assert abs(history[0]["loss"]) < 1e-6


def test_example_decompose_own_model():
    out = _run_example("decompose_own_model")
    for name in ("dr_grpo", "grpo"):
        assert out[name]["split_error"] < 1e-5  # total = shared + divergent, exactly (to rounding)
        assert out[name]["depth_error"] < 1e-5  # the depth subsets add up to the shared part
    # Prop. 1: uniform weights cancel on the prefix that every completion shares; 1/|o_i| weights do not
    assert abs(out["dr_grpo"]["w_agg_first_token"]) < 1e-7
    assert abs(out["grpo"]["w_agg_first_token"]) > 1e-3
    assert out["dr_grpo"]["w_agg_second_token"] != 0.0  # a prefix of two completions is not cancelled


def test_example_momentum_aware_chain():
    out = _run_example("momentum_aware_chain")
    adam, aware = out["adam"], out["momentum-aware"]
    # positive control: plain Adam's ratios do leave the clip region, at every learning rate of the sweep
    assert min(adam["escape_frac"]) > 0.0 and min(adam["max_excess"]) > 0.0
    # the trust-region guard in the chain keeps every ratio inside it (zero escape by construction)
    assert max(aware["escape_frac"]) == 0.0 and max(aware["max_excess"]) == 0.0
    assert all(np.isfinite(aware["objective"]))


# ----------------------------------------------------------------------------- doctests


@pytest.mark.parametrize("name", modules_with_doctests())
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=DOCTEST_FLAGS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} doctest(s) of {name} failed (the report is in the captured stdout)"


def test_doctests_cover_the_public_entry_points():
    have = set(modules_with_doctests())
    for name in ("jgrpo.optim", "analysis.overshoot", "analysis.prefix", "analysis.tabular", "jgrpo.policies"):
        assert name in have, name


# ----------------------------------------------------------------------------- __all__


def _qualified_uses(code: str) -> set[tuple[str, str]]:
    """(module, name) for every ``module.name`` and ``from module import name`` of jgrpo/analysis in ``code``."""
    tree = ast.parse(code)
    alias: dict[str, str] = {}  # local name -> dotted module
    uses: set[tuple[str, str]] = set()

    def is_module(dotted: str) -> bool:
        try:
            importlib.import_module(dotted)
        except ImportError:
            return False
        return True

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for a in node.names:
                if is_module(f"{node.module}.{a.name}"):
                    alias[a.asname or a.name] = f"{node.module}.{a.name}"
                else:
                    uses.add((node.module, a.name))

    def resolve(node) -> str | None:
        if isinstance(node, ast.Name):
            return alias.get(node.id)
        if isinstance(node, ast.Attribute):
            base = resolve(node.value)
            if base is not None and is_module(f"{base}.{node.attr}"):
                return f"{base}.{node.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = resolve(node.value)
            if base is not None and not is_module(f"{base}.{node.attr}"):
                uses.add((base, node.attr))
    return uses


def _documented_code() -> dict[str, str]:
    sources = {f"README block {i}": code for i, code in enumerate(readme_blocks())}
    sources.update({f"examples/{p.name}": p.read_text() for p in example_paths()})
    for name in modules_with_doctests():
        for test in doctest.DocTestFinder().find(importlib.import_module(name)):
            if test.examples:
                sources[f"doctest {test.name}"] = "\n".join(e.source for e in test.examples)
    return sources


def test_public_all_lists_what_the_readme_examples_and_docstrings_use():
    missing, unlisted_modules = [], set()
    for where, code in _documented_code().items():
        for module_name, attr in sorted(_qualified_uses(code)):
            module = importlib.import_module(module_name)
            assert hasattr(module, attr), f"{where}: {module_name}.{attr} does not exist"
            if not hasattr(module, "__all__"):
                unlisted_modules.add(module_name)
            elif attr not in module.__all__:
                missing.append(f"{where}: {module_name}.{attr}")
    assert not missing, "names used in the docs but not in their module's __all__:\n" + "\n".join(missing)
    # modules without __all__ (owned elsewhere) are allowed but must not be the ones this project documents
    assert not unlisted_modules & {
        "jgrpo",
        "jgrpo.optim",
        "jgrpo.policies",
        "analysis",
        "analysis.overshoot",
        "analysis.prefix",
        "analysis.proxy",
        "analysis.reward_scale",
        "analysis.tabular",
    }


def test_qualified_uses_finds_what_it_should():
    code = "\n".join(
        ["import jgrpo", "from analysis import prefix", "from jgrpo.optim import violation", "jgrpo.methods.get('x')"]
        + ["prefix.decompose", "jgrpo.loss"]
    )
    assert _qualified_uses(code) == {
        ("jgrpo.methods", "get"),
        ("analysis.prefix", "decompose"),
        ("jgrpo.optim", "violation"),
        ("jgrpo", "loss"),
    }
