"""The Pythons the code runs on: what pyproject.toml declares, and no construct that only 3.10
accepts (every file byte-compiled by the newest Python found on the machine, where one newer
than the running one exists; nothing is downloaded)."""
import ast
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: What the byte-compile check reads: the package, the scripts and the tests.
SOURCES = ["soco_d2", "tools", "benchmarks", "tests", "train_net.py"]
#: Standard-library modules that Python 3.12 and 3.13 removed (PEP 594, PEP 632, imp).
REMOVED_STDLIB = {
    "distutils", "imp", "asynchat", "asyncore", "smtpd",  # 3.12
    "aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap", "msilib", "nis",
    "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib",
    "lib2to3",  # 3.13
}


def _pyproject() -> str:
    with open(os.path.join(REPO_ROOT, "pyproject.toml")) as f:
        return f.read()


def _sources():
    for entry in SOURCES:
        path = os.path.join(REPO_ROOT, entry)
        yield from ([path] if path.endswith(".py") else sorted(glob.glob(os.path.join(path, "**", "*.py"), recursive=True)))


def test_pyproject_declares_the_pythons():
    text = _pyproject()
    lower = re.search(r'^requires-python\s*=\s*">=\s*3\.(\d+)"', text, re.M)
    assert lower, "pyproject.toml: requires-python must be '>=3.N'"
    minors = sorted(int(m) for m in re.findall(r'"Programming Language :: Python :: 3\.(\d+)"', text))
    # every minor version from the lower bound up, without gaps, the running one among them
    assert minors and minors[0] == int(lower.group(1)) and minors == list(range(minors[0], minors[-1] + 1))
    assert sys.version_info[:2] >= (3, minors[0]) and sys.version_info[1] in minors


def test_no_module_that_newer_pythons_removed():
    found = []
    for path in _sources():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            found += [f"{os.path.relpath(path, REPO_ROOT)}:{node.lineno} {n}" for n in names
                      if n.split(".")[0] in REMOVED_STDLIB]
    assert not found, "imports of modules removed in Python 3.12/3.13:\n" + "\n".join(found)


def _version_of(executable: str):
    """(major, minor) of a Python executable, or None if it does not run (e.g. a pyenv shim with
    no version selected)."""
    try:
        out = subprocess.run([executable, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.split()
    return (int(parts[0]), int(parts[1])) if out.returncode == 0 and len(parts) == 2 else None


def newest_python():
    """(version, executable) of the newest CPython 3 on this machine: pyenv's versions, /usr/bin,
    /usr/local/bin and PATH; None when there is none."""
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    if shutil.which("pyenv"):
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=20)
        pyenv_root = out.stdout.strip() or pyenv_root
    candidates = glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", "python3"))
    for folder in ["/usr/bin", "/usr/local/bin"] + os.environ.get("PATH", "").split(os.pathsep):
        candidates += [p for p in glob.glob(os.path.join(folder, "python3.*")) if re.search(r"python3\.\d+$", p)]
    found = {}
    for exe in candidates:
        real = os.path.realpath(exe)
        if real not in found and os.access(exe, os.X_OK):
            found[real] = (_version_of(exe), exe)
    versions = [(v, exe) for v, exe in found.values() if v is not None and v[0] == 3]
    return max(versions) if versions else None


def test_the_newest_python_on_the_machine_compiles_every_file(tmp_path):
    newest = newest_python()
    if newest is None or newest[0] <= sys.version_info[:2]:
        pytest.skip(f"no Python newer than {sys.version_info[0]}.{sys.version_info[1]} on this machine")
    (major, minor), exe = newest
    # Warnings as errors: an invalid escape sequence, deprecated since 3.6, is a SyntaxWarning
    # since 3.12 and an error to come. The bytecode goes to tmp_path (PYTHONPYCACHEPREFIX), not
    # into the repository.
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(tmp_path / "pycache"))

    def compileall(*paths, cwd=REPO_ROOT):
        return subprocess.run([exe, "-W", "error", "-m", "compileall", "-q", "-f", *paths], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)

    (tmp_path / "escape.py").write_text('pattern = "\\d+"\n')
    assert compileall("escape.py", cwd=tmp_path).returncode != 0  # the check can fail
    out = compileall(*SOURCES)
    assert out.returncode == 0, f"{exe} (Python {major}.{minor}) does not compile the code:\n{out.stdout}{out.stderr}"
