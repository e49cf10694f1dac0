"""The house's import rules (docs/architecture.md), read from every module's imports.

Every ``import`` statement counts, at module level or inside a function: a deferred
import still ties the two modules together.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("deepbof_tf", "beam_jobs", "trainer", "serving", "deepbof_tools")

# deepbof_tf's floors: a module imports only modules on its floor or below.
FLOORS = {
    0: ("config", "framing", "seeds", "signatures", "model_dir", "io_utils", "cli",
        "metrics", "plots", "catalog_parts", "segments"),
    1: ("decoders", "audio", "frontend", "sampling", "similarity", "catalog_index", "data",
        "layers"),
    2: ("models", "streaming", "native"),
    3: ("training", "exported", "excerpt_search"),
}
FLOOR_OF = {name: floor for floor, names in FLOORS.items() for name in names}


def _modules():
  for package in PACKAGES:
    for directory, _, files in os.walk(os.path.join(ROOT, package)):
      for name in sorted(files):
        if name.endswith(".py"):
          path = os.path.join(directory, name)
          module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          yield module.removesuffix(".__init__"), path


MODULES = dict(_modules())


def _imports(path):
  """(imported module or module.name, the names taken, at module level?) per import."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  top_level = {id(node) for node in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, (), id(node) in top_level
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = tuple(alias.name for alias in node.names)
      yield node.module, names, id(node) in top_level
      for name in names:
        yield f"{node.module}.{name}", (), id(node) in top_level


def _targets(path):
  """The project modules ``path`` imports (resolved to the longest known module)."""
  out = set()
  for imported, _, _ in _imports(path):
    while imported not in MODULES and "." in imported:
      imported = imported.rsplit(".", 1)[0]
    if imported in MODULES:
      out.add(imported)
  return out


def _floor(module):
  parts = module.split(".")
  return FLOOR_OF.get(parts[1]) if len(parts) > 1 else None


def test_every_library_module_has_a_floor():
  unplaced = sorted(m for m in MODULES
                    if m.startswith("deepbof_tf.") and _floor(m) is None)
  assert not unplaced, f"add these to FLOORS and docs/architecture.md: {unplaced}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("deepbof_tf.")))
def test_library_imports_run_down(module):
  floor = _floor(module)
  for target in _targets(MODULES[module]):
    assert target.split(".")[0] == "deepbof_tf", f"{module} imports {target}"
    if target == "deepbof_tf":
      continue
    assert _floor(target) <= floor, (
        f"{module} (floor {floor}) imports {target} (floor {_floor(target)})")
  if module.startswith("deepbof_tf.layers"):
    assert not {t for t in _targets(MODULES[module])
                if t.startswith(("deepbof_tf.data", "deepbof_tf.models"))}, module


@pytest.mark.parametrize("module", sorted(
    m for m in MODULES if _floor(m) == 0))
def test_ground_floor_does_not_import_tensorflow(module):
  for imported, _, top_level in _imports(MODULES[module]):
    assert not (top_level and imported.split(".")[0] in ("tensorflow", "keras")), (
        f"{module} imports {imported} at import time")


@pytest.mark.parametrize("package", ["beam_jobs", "trainer", "serving"])
def test_apps_import_the_library_and_not_each_other(package):
  for module, path in MODULES.items():
    if module.split(".")[0] != package:
      continue
    for target in _targets(path):
      assert target.split(".")[0] in (package, "deepbof_tf"), f"{module} imports {target}"


def test_beam_jobs_share_job_io_not_each_other():
  catalog = ("beam_jobs.tag_catalog", "beam_jobs.catalog_")
  for module, other in (("beam_jobs.preprocess_lib", catalog),
                        ("beam_jobs.tag_catalog_lib", "beam_jobs.preprocess"),
                        ("beam_jobs.catalog_record", "beam_jobs.preprocess"),
                        ("beam_jobs.catalog_runs", "beam_jobs.preprocess")):
    targets = _targets(MODULES[module])
    assert "beam_jobs.job_io" in targets
    assert not {t for t in targets if t.startswith(other)}, (module, targets)


def test_catalogue_modules_import_one_way():
  # pipeline <- record <- launcher <- CLI (docs/architecture.md)
  order = ("beam_jobs.tag_catalog_lib", "beam_jobs.catalog_record",
           "beam_jobs.catalog_runs", "beam_jobs.tag_catalog")
  for i, module in enumerate(order):
    assert not _targets(MODULES[module]) & set(order[i + 1:]), module


def test_tools_import_one_way():
  for module, path in MODULES.items():
    targets = _targets(path)
    if module.startswith(("deepbof_tools.experiments", "deepbof_tools.corpus_config")):
      assert not {t for t in targets if t.startswith("deepbof_tools.demo")}, module
    if module.startswith("deepbof_tools.corpus_config"):
      assert not {t for t in targets if t.startswith("deepbof_tools.")}, module


def _private(name):
  return name.startswith("_") and not name.endswith("__") and name != "_cd1"


def _module_aliases(tree):
  """Local names bound to a project module by an import (``from x import y as z``)."""
  aliases = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name in MODULES:
          aliases[alias.asname or alias.name] = alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        if f"{node.module}.{alias.name}" in MODULES:
          aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
  return aliases


def test_no_module_takes_private_names_of_another():
  for module, path in MODULES.items():
    for imported, names, _ in _imports(path):
      if imported.split(".")[0] not in PACKAGES or imported == module:
        continue
      private = [n for n in names if _private(n)]
      assert not private, f"{module} imports {private} from {imported}"
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    aliases = _module_aliases(tree)
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and aliases[node.value.id] != module
          and _private(node.attr)):
        raise AssertionError(f"{module} uses {aliases[node.value.id]}.{node.attr}")


# Every script of the repository, not only the packages: a moved name must not leave a
# benchmark, a reference driver or a test pointing at its old home.
SCRIPT_DIRS = PACKAGES + ("tests", "benchmarks", "reference")
# Compiled at install time (deepbof_tf/native/build.py), so no .py file names them.
EXTENSION_MODULES = ("deepbof_tf.native._cd1",)


def _scripts():
  for top in SCRIPT_DIRS:
    for directory, _, files in os.walk(os.path.join(ROOT, top)):
      for name in sorted(files):
        if name.endswith(".py"):
          yield os.path.join(directory, name)


def _defined_names(module):
  """The names a project module binds at module level (also inside top-level if/try)."""
  path = MODULES[module]
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  names = set()
  body = list(tree.body)
  while body:
    node = body.pop()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split(".")[0] for a in node.names)
    elif isinstance(node, (ast.If, ast.Try, ast.With)):
      body += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
      for handler in getattr(node, "handlers", []):
        body += handler.body
  names.update(m.rsplit(".", 1)[1] for m in (*MODULES, *EXTENSION_MODULES)
               if m.startswith(module + "."))
  return names


@pytest.mark.parametrize("path", sorted(_scripts()), ids=lambda p: os.path.relpath(p, ROOT))
def test_project_imports_resolve(path):
  """Each ``from project.module import name`` and ``alias.name`` names something there."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  missing = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if (alias.name.split(".")[0] in PACKAGES and alias.name not in MODULES
            and alias.name not in EXTENSION_MODULES):
          missing.append(alias.name)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module.split(".")[0] not in PACKAGES:
        continue
      if node.module in EXTENSION_MODULES:
        continue
      if node.module not in MODULES:
        missing.append(node.module)
        continue
      defined = _defined_names(node.module)
      missing += [f"{node.module}.{a.name}" for a in node.names if a.name not in defined]
  aliases = _module_aliases(tree)
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and isinstance(node.ctx, ast.Load)
        and node.attr not in _defined_names(aliases[node.value.id])):
      missing.append(f"{aliases[node.value.id]}.{node.attr}")
  assert not missing, f"{os.path.relpath(path, ROOT)} names what does not exist: {missing}"
