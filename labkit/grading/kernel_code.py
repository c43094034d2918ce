"""Code the grader injects into a submission's kernel: set-up, restore before the hidden tests, collect.

Three cells are added to every graded submission (and removed from the notebook kept in
``OUT/<id>/executed.ipynb``):

1. **guard** (before the submission's first cell, so before any student code runs): imports the
   check machinery and the modules the hidden tests use, and snapshots their attributes, a few
   ``sys`` attributes, ``sys.modules`` and IPython's input/AST transformers and event callbacks.
   It defines two functions in a private namespace whose builtins are a *copy* made at that
   moment, and exposes them under names that carry a random token.
2. **restore** (after the submission's last cell, before the hidden tests): puts back every
   snapshotted attribute the submission changed (``lk.check = lambda *a, **k: True``,
   ``torch.equal = ...``, ``builtins.print = ...``, ``sys.modules["labkit"] = fake``...), removes
   attributes it added to labkit's modules, rebinds the instructor notebook's import aliases
   (``lk``, ``torch``, ``np``...) in the user namespace, then builds a *pristine* copy of
   ``labkit/results.py`` from source text sent by the grader (not from the file, which the
   submission could have edited when the sandbox has no read-only mounts) and installs its
   ``check``/``record`` as ``labkit.results.check``/``record``. Hidden checks are therefore
   stored in a store the submission has never seen.
3. **collect** (after the hidden tests): prints one line ``LABKIT-GRADER <nonce> <json>`` with
   the pristine store's checks. The nonce is random per submission and appears only in this
   cell, which the grader sends only after the submission's cells have finished; the grader
   accepts exactly one line bearing it.

What this does not stop (documented on the instructors page): code that keeps running while the
hidden tests run (a thread) or that rewrites the hidden cells before they execute (an IPython
input transformer registered and then hidden from the snapshot, ``sys.settrace`` in another
thread, ``gc``/``ctypes`` surgery on the grader's own objects). The grader flags the
submissions whose source uses such tools (see ``grade.SUSPICIOUS``).
"""

from __future__ import annotations

import json

__all__ = ["MARK", "guard_cell", "restore_cell", "collect_cell", "GUARD_MODULES"]

MARK = "LABKIT-GRADER"

# Modules whose attributes are snapshotted (when importable). Cheap ones only; torch and numpy
# are added when the instructor notebook imports them.
GUARD_MODULES = ("builtins", "os", "os.path", "io", "json", "math", "types", "functools", "operator",
                 "importlib", "importlib.util", "random", "labkit", "labkit.results")
_CLASSES = (("torch", "Tensor"), ("torch.nn", "Module"))

# Runs once, in a private namespace, inside the kernel, before the submission's first cell.
_GUARD = r'''
import sys, types, importlib, builtins as _builtins_module
_MISSING = object()
_setattr, _getattr, _isinstance, _list, _dict, _sorted = setattr, getattr, isinstance, list, dict, sorted
_settrace, _setprofile = sys.settrace, sys.setprofile
try:
    _ip = get_ipython()
except NameError:
    _ip = None

_mods = {}
for _name in MODULES:
    try:
        _m = importlib.import_module(_name)
    except Exception:
        continue
    _mods[_name] = (_m, _dict(vars(_m)))
for _k in ("input", "raw_input", "getpass"):  # ipykernel rebinds these for every cell
    _mods.get("builtins", (None, {}))[1].pop(_k, None)
_lk = sys.modules.get("labkit")
for _n in LK_NAMES:  # what the hidden tests use from labkit: import the modules providing it now
    try:
        _getattr(_lk, _n, None)
    except Exception:
        pass
for _name in _sorted(sys.modules):
    if (_name == "labkit" or _name.startswith("labkit.")) and _name not in _mods:
        _m = sys.modules[_name]
        if _isinstance(_m, types.ModuleType):
            _mods[_name] = (_m, _dict(vars(_m)))
_classes = []
for _mname, _cname in CLASSES:
    _m = sys.modules.get(_mname)
    _c = _getattr(_m, _cname, None) if _m is not None else None
    if _isinstance(_c, type):
        _classes.append((_mname + "." + _cname, _c, _dict(vars(_c))))
_SYS_ATTRS = ("stdout", "stderr", "displayhook", "meta_path", "path_hooks", "path")
_sys_attrs = {k: _getattr(sys, k) for k in _SYS_ATTRS}
_sys_lists = {k: _list(_getattr(sys, k)) for k in ("meta_path", "path_hooks", "path")}
_sys_modules = _dict(sys.modules)
_ip_lists = {}
_ip_events = {}
if _ip is not None:
    for _k in ("input_transformers_cleanup", "input_transformers_post", "ast_transformers"):
        _v = _getattr(_ip, _k, None)
        if _isinstance(_v, _list):
            _ip_lists[_k] = (_v, _list(_v))
    _ip_events = {ev: _list(cbs) for ev, cbs in _ip.events.callbacks.items()}
_out = sys.stdout
_dumps = importlib.import_module("json").dumps
_state = {"pristine": None, "restored": []}


def _restore():
    restored = []
    _settrace(None)
    _setprofile(None)
    for k, v in _sys_attrs.items():
        if _getattr(sys, k, _MISSING) is not v:
            _setattr(sys, k, v)
            restored.append("sys." + k)
    for k, saved in _sys_lists.items():
        cur = _getattr(sys, k)
        if _list(cur) != saved:
            cur[:] = saved
            restored.append("sys." + k + "[:]")
    for name, mod in _sys_modules.items():
        if sys.modules.get(name, _MISSING) is not mod:
            sys.modules[name] = mod
            if not name.startswith("_"):
                restored.append("sys.modules[" + repr(name) + "]")
    for name, (mod, snap) in _mods.items():
        d = vars(mod)
        for k, v in snap.items():
            if d.get(k, _MISSING) is not v:
                d[k] = v
                if not (name == "builtins" and k.startswith("_")):
                    restored.append(name + "." + k)
        if name == "labkit" or name.startswith("labkit."):
            for k in _list(d):
                if k not in snap and not _isinstance(d[k], types.ModuleType):
                    del d[k]
                    restored.append("added " + name + "." + k)
    for qual, cls, snap in _classes:
        for k, v in snap.items():
            if cls.__dict__.get(k, _MISSING) is not v:
                try:
                    _setattr(cls, k, v)
                    restored.append(qual + "." + k)
                except (TypeError, AttributeError):
                    pass
        for k in _list(cls.__dict__):
            if k not in snap:
                try:
                    delattr(cls, k)
                    restored.append("added " + qual + "." + k)
                except (TypeError, AttributeError):
                    pass
    if _ip is not None:
        for k, (lst, saved) in _ip_lists.items():
            cur = _getattr(_ip, k, None)
            if cur is not lst:
                _setattr(_ip, k, lst)
                restored.append("ip." + k)
            if _list(lst) != saved:
                lst[:] = saved
                restored.append("ip." + k + "[:]")
        for ev, cbs in _ip.events.callbacks.items():
            saved = _ip_events.get(ev, [])
            for cb in _list(cbs):
                mod = _getattr(cb, "__module__", "") or ""
                if cb not in saved and not mod.startswith(TRUSTED_CALLBACKS):
                    cbs.remove(cb)
                    restored.append("ip.events." + ev)
    lk_mod = _mods.get("labkit", (None,))[0]
    res_mod = _mods.get("labkit.results", (None,))[0]
    # a pristine labkit.results, from the source text the grader sent (not from the file)
    pname = "_labkit_grader_results_" + TOKEN
    pristine = types.ModuleType(pname)
    pristine.__dict__["__builtins__"] = _BUILTINS
    sys.modules[pname] = pristine
    try:
        exec(compile(RESULTS_SRC, "labkit/results.py (grader copy)", "exec"), pristine.__dict__)
    finally:
        sys.modules.pop(pname, None)
    if "_flush" in pristine.__dict__:
        pristine.__dict__["_flush"] = lambda: None
    if res_mod is not None:
        res_mod.__dict__["check"] = pristine.check
        res_mod.__dict__["record"] = pristine.record
    if lk_mod is not None:
        cache = lk_mod.__dict__.get("_cache")
        if _isinstance(cache, _dict):
            cache.clear()
    if _ip is not None:
        for alias, modname in ALIASES.items():
            mod = sys.modules.get(modname)
            if mod is None:
                try:
                    mod = importlib.import_module(modname)
                except Exception:  # "from package import function": the function itself
                    parent, _, attr = modname.rpartition(".")
                    try:
                        mod = _getattr(importlib.import_module(parent), attr)
                    except Exception:
                        continue
            if _ip.user_ns.get(alias, _MISSING) is not mod:
                if alias in _ip.user_ns:
                    restored.append("user namespace " + alias)
                _ip.user_ns[alias] = mod
    _state["pristine"] = pristine
    _state["restored"] = restored


def _collect(nonce):
    pristine = _state["pristine"]
    checks = pristine.get_results()["checks"] if pristine is not None else []
    payload = {"nonce": nonce, "checks": checks, "restored": _state["restored"],
               "restore_ran": pristine is not None}
    _out.write("\n" + MARK + " " + nonce + " " + _dumps(payload) + "\n")
    _out.flush()


_setattr(_builtins_module, "_labkit_grader_restore_" + TOKEN, _restore)
_setattr(_builtins_module, "_labkit_grader_collect_" + TOKEN, _collect)
_mods["builtins"][1]["_labkit_grader_restore_" + TOKEN] = _restore
_mods["builtins"][1]["_labkit_grader_collect_" + TOKEN] = _collect
'''

_TRUSTED_CALLBACKS = ("IPython.", "ipykernel.", "matplotlib_inline.", "matplotlib.", "ipywidgets.")


def guard_cell(*, token: str, results_source: str, modules: tuple[str, ...] = (),
               aliases: dict[str, str] | None = None, labkit_names: tuple[str, ...] = ()) -> str:
    """Source of the guard cell (step 1). ``modules`` adds modules to snapshot (e.g. ``torch``);
    ``aliases`` maps the instructor notebook's import names to modules (``{"lk": "labkit"}``);
    ``labkit_names`` are the ``lk.NAME`` the hidden tests use (their modules are snapshotted)."""
    if not token.isalnum():
        raise ValueError(f"token must be alphanumeric, got {token!r}")
    names = list(dict.fromkeys([*GUARD_MODULES, *modules]))
    env = {
        "MODULES": names,
        "CLASSES": [list(c) for c in _CLASSES],
        "TOKEN": token,
        "RESULTS_SRC": results_source,
        "ALIASES": dict(aliases or {}),
        "LK_NAMES": [n for n in labkit_names if n.isidentifier()],
        "MARK": MARK,
        "TRUSTED_CALLBACKS": list(_TRUSTED_CALLBACKS),
    }
    return (
        "# labkit grader: set-up, inserted before the submission (not part of it)\n"
        "def _labkit_grader_setup():\n"
        "    import builtins, json\n"
        f"    env = json.loads({json.dumps(json.dumps(env))})\n"
        "    env['TRUSTED_CALLBACKS'] = tuple(env['TRUSTED_CALLBACKS'])\n"
        "    env['CLASSES'] = [tuple(c) for c in env['CLASSES']]\n"
        "    env['_BUILTINS'] = dict(vars(builtins))\n"
        "    env['__builtins__'] = env['_BUILTINS']\n"
        "    env['__name__'] = '_labkit_grader'\n"
        f"    exec(compile({_GUARD!r}, '<labkit-grader>', 'exec'), env)\n"
        "_labkit_grader_setup()\n"
        "del _labkit_grader_setup\n"
    )


def restore_cell(token: str) -> str:
    """Source of the restore cell (step 2)."""
    return f"# labkit grader: restore, then the hidden tests\n_labkit_grader_restore_{token}()\n"


def collect_cell(token: str, nonce: str) -> str:
    """Source of the collect cell (step 3)."""
    return f"# labkit grader: collect the hidden checks\n_labkit_grader_collect_{token}({nonce!r})\n"
