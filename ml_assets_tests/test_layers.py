"""Imports run one way: no module of ml_assets imports one that imports it back, through any
chain, imports inside functions included. Which way they run (cli > local > definitions > defs >
train > evaluate > data > runtime) is import-linter's layers contract in pyproject.toml, which
`lint-imports` checks in `make lint`; this test finds the circles inside a layer too."""

import grimp


def import_graph() -> grimp.ImportGraph:
    """Every import between modules of ml_assets, those inside functions included (grimp reads
    the source; nothing is imported)."""
    return grimp.build_graph("ml_assets", cache_dir=None)


def cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """Each circle as the chain of imports from a module back to itself, once per circle."""
    found, seen = [], set()
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None and frozenset(back) not in seen:
                seen.add(frozenset(back))
                found.append((importer, *back))
    return found


def described(found: list[tuple[str, ...]]) -> str:
    return "import cycles:\n" + "\n".join(" -> ".join(chain) for chain in found)


def test_no_module_imports_itself_back():
    found = cycles(import_graph())
    assert not found, described(found)


def test_a_planted_cycle_is_found_with_its_chain():
    graph = import_graph()
    assert graph.direct_import_exists(
        importer="ml_assets.train.runs", imported="ml_assets.data.atomic"
    )
    graph.add_import(importer="ml_assets.data.atomic", imported="ml_assets.train.runs")
    found = cycles(graph)
    # Other circles now close through the planted import too (data.folds -> ... -> data.folds).
    assert ("ml_assets.data.atomic", "ml_assets.train.runs", "ml_assets.data.atomic") in found
    assert "ml_assets.data.atomic -> ml_assets.train.runs -> ml_assets.data.atomic" in described(
        found
    )
