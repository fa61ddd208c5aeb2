"""README.md and docs/ say what runs: their quick commands run here, their links resolve.

- every script they name answers ``--help``, and every ``python <script> ...`` command they show
  is accepted by that script's argument parser as written (parsed, not run);
- every ``train_net.py`` command's config and ``KEY VALUE`` overrides load through
  ``train_net.setup``, and so does every config file they name;
- the commands that take seconds run: the own-images proposal step on a few tiny scenes (then
  the pretraining step's dataset registration reads those proposals back), and ``tools/probe.py``
  as shown, on a tiny labelled set with random weights;
- every ``make`` target in a command exists, every repository path they name exists, every
  relative link points to an existing file (and heading, for ``#anchors``).
"""
import argparse
import contextlib
import glob
import io
import json
import os
import re
import runpy
import shlex
import sys

import pytest

from train_helpers import TrainArgs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO_ROOT, "README.md")
DOC_FILES = [README] + sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "**", "*.md"), recursive=True))
README_MAX_LINES = 250


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def rel(path):
    return os.path.relpath(path, REPO_ROOT)


TEXTS = {rel(p): read(p) for p in DOC_FILES}


# ------------------------------------------------------------------ commands in the docs
def shell_commands(text):
    """Token lists of the commands in the ```bash blocks of ``text``: continuation lines joined,
    comments dropped, leading ``VAR=value`` assignments removed."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens and re.match(r"^[A-Za-z_]\w*=", tokens[0]):
                tokens.pop(0)
            if tokens:
                commands.append(tokens)
    return commands


def inline_python_commands(text):
    """Token lists of the inline code spans that are a whole ``python <script>.py`` command."""
    spans = re.findall(r"`((?:\.venv/bin/)?python [^`]+)`", text)
    return [shlex.split(" ".join(s.split())) for s in spans]


def is_python(token):
    return token == "python" or token.endswith("/python")


def python_commands():
    """``(doc, script, argv)`` of every python script command in the docs."""
    found = []
    for doc, text in TEXTS.items():
        for tokens in shell_commands(text) + inline_python_commands(text):
            if len(tokens) >= 2 and is_python(tokens[0]) and tokens[1].endswith(".py"):
                found.append((doc, tokens[1], tokens[2:]))
    return found


def is_script(path):
    """A file run as ``python path`` (it has a ``__main__`` guard), not a library module."""
    full = os.path.join(REPO_ROOT, path)
    return not os.path.isfile(full) or "__name__ == \"__main__\"" in read(full)


PYTHON_COMMANDS = python_commands()
# Scripts the docs run or name (benchmarks/harness.py, named too, is a library)
SCRIPTS = sorted(s for s in {"train_net.py"} | {s for _, s, _ in PYTHON_COMMANDS} | {
    m for text in TEXTS.values() for m in re.findall(r"(?<![\w/])(?:tools|benchmarks)/\w+\.py", text)}
    if is_script(s))


def command_id(command):
    doc, script, argv = command
    return f"{doc}: {script} {' '.join(argv)}"[:120]


def find_command(doc, script):
    """The first command of ``doc`` that runs ``script``, as (script, argv)."""
    for d, s, argv in PYTHON_COMMANDS:
        if d == doc and s == script:
            return list(argv)
    pytest.fail(f"{doc} shows no `python {script}` command any more; update this test")


# ------------------------------------------------------------------ running a script
class _Parsed(Exception):
    """Raised instead of running a script once its argument parser has accepted the command."""


@contextlib.contextmanager
def script_argv(script, argv, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", [script] + list(argv))
    monkeypatch.setattr(sys, "path", [REPO_ROOT] + sys.path)  # as `python script` from the root
    yield


def run_script(script, argv, monkeypatch):
    """Run ``python script argv...`` in this process, as from the repository root; returns
    (exit status, stdout + stderr)."""
    out = io.StringIO()
    with script_argv(script, argv, monkeypatch), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(out):
        try:
            runpy.run_path(os.path.join(REPO_ROOT, script), run_name="__main__")
            code = 0
        except SystemExit as e:
            code = 0 if e.code is None else e.code
    return code, out.getvalue()


def parse_only(script, argv, monkeypatch):
    """The namespace the script's argument parser makes of ``argv``; nothing else runs."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    err = io.StringIO()
    with script_argv(script, argv, monkeypatch), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(os.path.join(REPO_ROOT, script), run_name="__main__")
        except _Parsed as parsed:
            return parsed.args[0]
        except SystemExit as e:
            pytest.fail(f"`{script} {' '.join(argv)}` is refused (exit {e.code}): {err.getvalue()}")
    pytest.fail(f"{script} ran to the end without parsing its arguments")


@pytest.fixture
def keep_dataset_catalog():
    """Datasets registered by a test are removed afterwards (commands register names like
    ``my_images`` with placeholder folders)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def setup_cfg(config_file, opts, tmp_path):
    from train_net import setup

    return setup(TrainArgs(config_file=config_file,
                           opts=list(opts) + ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)]))


# ------------------------------------------------------------------ the tests
def test_the_docs_show_commands_at_all():
    # guards the extraction itself: a regex that stops matching would pass every test below
    scripts = {s for _, s, _ in PYTHON_COMMANDS}
    assert {"train_net.py", "tools/generate_proposals.py", "tools/probe.py",
            "tools/convert_to_d2.py"} <= scripts
    assert sum(s == "train_net.py" for _, s, _ in PYTHON_COMMANDS) >= 10


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_named_answers_help(script, monkeypatch):
    assert os.path.isfile(os.path.join(REPO_ROOT, script)), f"{script} is named in the docs but does not exist"
    code, out = run_script(script, ["--help"], monkeypatch)
    assert code == 0 and "usage:" in out, out[-2000:]


def test_train_net_help_as_a_user_runs_it():
    import subprocess

    done = subprocess.run([sys.executable, "train_net.py", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--config-file" in done.stdout and "--num-gpus" in done.stdout


@pytest.mark.parametrize("command", PYTHON_COMMANDS, ids=command_id)
def test_every_command_is_accepted_as_written(command, monkeypatch, tmp_path, keep_dataset_catalog):
    doc, script, argv = command
    args = parse_only(script, argv, monkeypatch)
    if script == "train_net.py":
        cfg = setup_cfg(args.config_file, args.opts, tmp_path)  # the file and every KEY VALUE
        assert cfg.is_frozen()


def config_names():
    """Every ``.yaml`` named in the docs, as written (paths or bare file names)."""
    names = set()
    for text in TEXTS.values():
        for name in re.findall(r"(?<![\w/.:-])([\w./-]*\w\.yaml)\b", text):
            names.add(name)
    return sorted(names)


CONFIG_FILES = [os.path.relpath(p, REPO_ROOT)
                for p in glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True)]


def resolve_config(name):
    """A docs config name -> its path: as written from the root, or a bare name found once
    under configs/."""
    if "/" in name:
        return name if os.path.isfile(os.path.join(REPO_ROOT, name)) else None
    matches = [p for p in CONFIG_FILES if os.path.basename(p) == name]
    return matches[0] if len(matches) == 1 else None


def test_every_config_named_exists():
    names = config_names()
    assert "configs/soco/soco_demo_synthetic.yaml" in names and "Base-SoCo-R50-C4.yaml" in names
    missing = [n for n in names if resolve_config(n) is None]
    assert not missing, f"configs named in the docs but not (once) under configs/: {missing}"


@pytest.mark.parametrize("path", sorted({resolve_config(n) for n in config_names()} - {None}))
def test_every_config_named_loads(path, tmp_path, keep_dataset_catalog):
    cfg = setup_cfg(path, [], tmp_path)
    assert cfg.is_frozen() and cfg.MODEL.DEVICE == "cpu"


def test_make_targets_of_the_commands_exist():
    makefile = read(os.path.join(REPO_ROOT, "Makefile"))
    targets = set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", makefile, re.M))
    used = {t for text in TEXTS.values() for cmd in shell_commands(text) if cmd[0] == "make" for t in cmd[1:]}
    assert {"demo", "test"} <= used
    assert used <= targets, f"make targets shown but missing from the Makefile: {sorted(used - targets)}"


def test_every_repository_path_named_exists():
    missing = []
    for doc, text in TEXTS.items():
        for path in re.findall(r"`((?:soco_d2|tools|benchmarks|tests|configs|docs)/[^`\s]*)`", text):
            if "<" in path:
                continue  # a pattern such as soco_d2/methods/<method>/
            if "*" in path:
                ok = bool(glob.glob(os.path.join(REPO_ROOT, path)))
            else:
                ok = os.path.exists(os.path.join(REPO_ROOT, path))
            if not ok:
                missing.append(f"{doc}: {path}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def heading_anchors(text):
    """GitHub's anchors of the markdown headings of ``text``."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    anchors, seen = set(), {}
    for title in re.findall(r"^#{1,6} +(.+?) *$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_heading_anchors_follow_github():
    assert heading_anchors("# A: b, c\n## Full budget: +14.93 ± 1.51 box AP\n## A: b, c\n") == {
        "a-b-c", "full-budget-1493--151-box-ap", "a-b-c-1"}


def test_every_relative_link_resolves():
    broken = []
    for doc, text in TEXTS.items():
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(REPO_ROOT, os.path.dirname(doc), file_part)) \
                if file_part else os.path.join(REPO_ROOT, doc)
            if not os.path.exists(path):
                broken.append(f"{doc}: {target} (no file {rel(path)})")
            elif anchor and anchor not in heading_anchors(read(path)):
                broken.append(f"{doc}: {target} (no heading #{anchor} in {rel(path)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_stays_short_and_pages_say_what_they_are_for():
    assert len(TEXTS["README.md"].splitlines()) <= README_MAX_LINES
    for doc, text in TEXTS.items():
        if doc.startswith("docs"):
            first = text.split("\n\n")[1]
            assert first.startswith("With this page you can"), f"{doc} does not start with what it is for"


def test_own_images_proposals_then_registration(tiny_images, tmp_path, monkeypatch, keep_dataset_catalog):
    """README's "Pretrain on your own images", steps 1 and 2, on 8 tiny scenes: the proposal
    command as shown (one worker), then the pretraining command's dataset registration."""
    from detectron2.data import DatasetCatalog

    _, image_root = tiny_images
    proposals = str(tmp_path / "tiny_ss.pkl")

    def ours(argv):
        subs = {"/data/my_images_ss.pkl": proposals, "/data/my_images": image_root, "my_images": "docs_tiny"}
        out = []
        for a in argv:
            for old, new in subs.items():
                a = a.replace(old, new)
            out.append(a)
        return out

    step1 = ours(find_command("README.md", "tools/generate_proposals.py"))
    step1[step1.index("--workers") + 1] = "1"
    code, out = run_script("tools/generate_proposals.py", step1 + ["--no-progress"], monkeypatch)
    assert code == 0, out[-2000:]
    assert os.path.isfile(proposals)

    args = parse_only("train_net.py", ours(find_command("README.md", "train_net.py")), monkeypatch)
    cfg = setup_cfg(args.config_file, args.opts, tmp_path / "out")
    assert cfg.DATASETS.TRAIN == ("docs_tiny",)
    records = DatasetCatalog.get("docs_tiny")
    assert len(records) == 8
    assert all(len(r["proposal_boxes"]) > 0 for r in records)


def test_probe_tool_as_shown_on_a_tiny_set(tiny_images, tmp_path, monkeypatch):
    """docs/monitors.md's tools/probe.py command, on 8 tiny labelled scenes instead of the val
    scenes and with random weights only (no trunk file needed)."""
    json_file, image_root = tiny_images
    argv = find_command("docs/monitors.md", "tools/probe.py")
    i = argv.index("--dataset")
    argv[i:i + 2] = ["--json", json_file, "--image-root", image_root]
    i = argv.index("--weights")
    j = next((k for k in range(i + 1, len(argv)) if argv[k].startswith("--")), len(argv))
    argv[i:j] = ["--weights", "random"]
    out_file = tmp_path / "probe.json"
    argv[argv.index("--out") + 1] = str(out_file)
    code, out = run_script("tools/probe.py", argv + ["--max-images", "4"], monkeypatch)
    assert code == 0, out[-2000:]
    assert "knn_head" in out
    rows = json.loads(out_file.read_text())["results"]
    assert [r["trunk"] for r in rows] == ["random"]
    assert 0.0 <= rows[0]["knn_head"] <= 1.0 and rows[0]["num_images"] == 4
