"""The bad-input catalogue: every case exits 2 with one line on stderr that names the key or the
file, and leaves nothing on disk (in particular no empty ``runs/``).

Cases run in-process through ``peerlearn.cli.main`` from an empty working directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from peerlearn.cli import main

SMALL = ["--set", "nodes=4", "--set", "stop.virtual_time_s=1", "--set", "eval.every_s=1"]


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: str  # a substring of the error line (the key or the file)
    setup: Callable[[Path], None] | None = None
    also: list[str] = field(default_factory=list)  # more substrings of the error line


def run_set(*items: str) -> list[str]:
    return ["run", *SMALL, *[a for item in items for a in ("--set", item)], "--quiet"]


ML = ["data.dataset=movielens", "model.name=matrix_factorization", "data.partition=by_user"]
ML_CSV = "movielens/ml-latest-small/ratings.csv"


def _movielens(row: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / "mlroot" / ML_CSV
        path.parent.mkdir(parents=True)
        good = "".join(f"{u},{i},4.0,964982703\n" for u in range(1, 9) for i in range(1, 6))
        path.write_text("userId,movieId,rating,timestamp\n" + good + row + "\n")

    return setup


def _cifar_bomb(tmp: Path) -> None:
    """A batch pickle whose array state claims a (10^6, 10^6) object array."""
    import pickle

    import numpy as np

    folder = tmp / "cfroot" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    ok = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(ok, protocol=2))
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]

    class Bomb:
        def __reduce__(self):
            state = (1, (10**6, 10**6), np.dtype("O"), False, [])
            return (reconstruct, (np.ndarray, (0,), b"b"), state)

    (folder / "data_batch_1").write_bytes(
        pickle.dumps({b"data": Bomb(), b"labels": [0]}, protocol=2)
    )


def _deployment(csv_rows: list[str] | None = None, stats: str | None = None, summary=None):
    """A merge-ready run directory ``dep/`` of 3 nodes (node 2 left nothing), with an optional
    bad file for node 1."""

    def setup(tmp: Path) -> None:
        import json
        from dataclasses import asdict

        from peerlearn.config import dump_config, load_config
        from peerlearn.deploy.node import NodeStats

        run = tmp / "dep"
        (run / "nodes").mkdir(parents=True)
        cfg = load_config(None, ["nodes=3", "engine=deploy", "topology.kind=ring"])
        (run / "config.toml").write_text(dump_config(cfg))
        for i in range(2):
            rows = [f"1.0,{i},3,test_acc,0.5", f"1.0,{i},3,test_loss,1.2"]
            if i == 1 and csv_rows is not None:
                rows = csv_rows
            header = "time_s,node,iteration,metric,value\n"
            (run / "nodes" / f"node-{i}.csv").write_text(header + "\n".join(rows) + "\n")
            text = json.dumps(asdict(NodeStats(i, iterations=3, end_s=2.0)))
            if i == 1 and stats is not None:
                text = stats
            (run / "nodes" / f"node-{i}.json").write_text(text)
        if summary is not None:
            (run / "summary.json").write_text(summary)

    return setup


def _merged_empty(tmp: Path) -> None:
    """What merging a simulator directory used to leave: an empty summary beside metrics."""
    _deployment(summary="{}")(tmp)
    (tmp / "dep" / "metrics.csv").write_text("time_s,node,iteration,metric,value\n1.0,-1,3,x,1\n")


def _keys(tmp: Path) -> None:
    from peerlearn.deploy.keys import generate_keys

    generate_keys(tmp / "kk", 2)


CASES = [
    # one-line errors instead of tracebacks
    Case("seed-overflow", run_set("seed=99999999999999999999"), "seed"),
    Case("rate-update-inf", run_set("network.rate_update_s=inf"), "network.rate_update_s"),
    Case("name-nul", run_set('name="a\\u0000b"'), "name"),
    Case("local-steps-huge", run_set("train.local_steps=1000000000000"), "train.local_steps"),
    Case("batch-size-huge", run_set("train.batch_size=1000000000"), "train.batch_size"),
    Case("hidden-huge", run_set("model.hidden=[100000,100000]"), "model.hidden", also=["GB"]),
    Case(
        "fragments-too-many",
        run_set("algorithm.name=divshare", "algorithm.fragments=1000000"),
        "algorithm.fragments",
    ),
    Case("config-not-utf8", ["run", "bad.toml"], "bad.toml", also=["UTF-8"]),
    # accepted but absurd
    Case("stop-inf", run_set("stop.virtual_time_s=inf"), "stop.virtual_time_s"),
    Case("stop-1e300", run_set("stop.virtual_time_s=1e300"), "stop.virtual_time_s"),
    Case("step-time-tiny", run_set("compute.step_time_s=1e-300"), "compute.step_time_s"),
    Case("eval-every-tiny", run_set("eval.every_s=1e-9"), "eval.every_s"),
    Case("lr-inf", run_set("train.lr=inf"), "train.lr"),
    Case("name-dotdot", run_set('name="../../x"'), "name"),
    Case("name-absolute", run_set('name="/tmp/x"'), "name"),
    Case("name-empty", run_set('name=""'), "name"),
    # data files
    Case(
        "movielens-200kb-field",
        run_set(*ML, "data.root=mlroot", "data.download=false"),
        "ratings.csv",
        setup=_movielens("1," + "9" * 200_000 + ",4.0,1"),
        also=["line 42"],
    ),
    Case(
        "movielens-20-digit-user",
        run_set(*ML, "data.root=mlroot", "data.download=false"),
        "ratings.csv",
        setup=_movielens("12345678901234567890,1,4.0,1"),
        also=["line 42", "user id"],
    ),
    Case(
        "cifar-pickle-bomb",
        run_set(
            "data.dataset=cifar10",
            "model.name=gn_lenet",
            "data.root=cfroot",
            "data.download=false",
        ),
        "data_batch_1",
        setup=_cifar_bomb,
    ),
    # deploy-adjacent commands
    Case("keys-negative-nodes", ["keys", "k", "--nodes", "-3"], "--nodes -3"),
    Case("keys-existing", ["keys", "kk", "--nodes", "2"], "kk", setup=_keys, also=["--overwrite"]),
    Case(
        "merge-corrupt-node-json",
        ["merge", "dep"],
        "node-1.json",
        setup=_deployment(stats='{"node": 1, "iter'),
    ),
    Case(
        "merge-unknown-node-id",
        ["merge", "dep"],
        "node-1.csv",
        setup=_deployment(csv_rows=["1.0,99,3,test_acc,0.5"]),
        also=["line 2", "99"],
    ),
    Case(
        "merge-accuracy-out-of-range",
        ["merge", "dep"],
        "node-1.csv",
        setup=_deployment(csv_rows=["1.0,1,3,test_acc,7.5"]),
        also=["test_acc"],
    ),
    Case(
        "merge-simulator-run",
        ["merge", "dep"],
        "dep",
        setup=_deployment(summary='{"engine": "sim"}'),
        also=["not a deployment"],
    ),
    Case(
        "compare-runs-empty-summary",
        ["compare-runs", "dep"],
        "dep",
        setup=_merged_empty,
        also=["summary.json lacks"],
    ),
    Case(
        "compare-variant-fails-set-up",
        ["compare", *SMALL, "--algorithms", "divshare[fragments=1000000]", "--quiet"],
        "algorithm.fragments",
    ),
    # run directories
    Case("out-cannot-be-created", [*run_set(), "--out", "afile/sub"], "afile"),
    Case("out-is-a-file", [*run_set(), "--out", "afile", "--overwrite"], "afile"),
    Case("overwrite-not-a-run", [*run_set(), "--out", "mine", "--overwrite"], "mine"),
    Case("overwrite-cwd", [*run_set(), "--out", ".", "--overwrite"], "working directory"),
    Case("setup-error-default-out", run_set("data.shards=1000", "data.partition=kshard"), "data"),
    Case(
        "setup-error-new-out",
        [*run_set("data.shards=1000", "data.partition=kshard"), "--out", "new/deeper/r"],
        "data",
    ),
]


def _setup_files(tmp: Path) -> None:
    (tmp / "bad.toml").write_bytes(b'name = "caf\xe9"\n')
    (tmp / "afile").write_text("not a directory")
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("precious")


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    case: Case, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    _setup_files(tmp_path)
    if case.setup is not None:
        case.setup(tmp_path)
    before = _snapshot(tmp_path)
    assert main(case.argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    for text in (case.expect, *case.also):
        assert text in lines[0], err
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "runs").exists()


RUN = [*SMALL, "--set", "nodes=6", "--quiet"]


def test_overwrite_keeps_the_old_run_when_the_new_one_fails_set_up(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r"
    assert main(["run", *RUN, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = ["--set", "data.partition=kshard", "--set", "data.shards=1000"]
    assert main(["run", *RUN, *bad, "--out", str(out), "--overwrite"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no staging or lock left
    assert main(["run", *RUN, "--set", "seed=2", "--out", str(out), "--overwrite"]) == 0
    assert (out / "metrics.csv").read_bytes() != before["metrics.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_a_second_run_to_the_same_out_fails_while_the_first_holds_it(
    tmp_path: Path, capsys
) -> None:
    from peerlearn.results.rundir import open_run_dir

    out = tmp_path / "r"
    with open_run_dir(out, "x", overwrite=False) as rd:
        (rd.path / "config.toml").write_text("")
        assert main(["run", *RUN, "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "in use" in err and str(out) in err
        (rd.path / "summary.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    assert main(["run", *RUN, "--out", str(out), "--overwrite"]) == 0  # released


def test_default_names_skip_a_directory_in_use(tmp_path: Path, monkeypatch) -> None:
    from peerlearn.results.rundir import open_run_dir

    monkeypatch.chdir(tmp_path)
    with (
        open_run_dir(None, "same", overwrite=False) as a,
        open_run_dir(None, "same", overwrite=False) as b,
    ):
        assert a.final != b.final
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["same", "same-2"]


def test_memory_estimate_names_the_largest_term() -> None:
    from peerlearn.compute import budget

    terms = budget.estimate(
        nodes=10,
        params=1000,
        act_per_sample=10,
        batch_size=8,
        local_steps=5,
        device="cpu",
        model_keys="model.hidden = [10]",
    )
    budget.check(terms, available=10**9)  # fits
    with pytest.raises(ValueError, match=r"model\.hidden = \[10\]"):
        budget.check(terms, available=1000)


def test_divergence_is_warned_marked_and_written_as_strict_json(tmp_path: Path, capsys) -> None:
    import json

    out = tmp_path / "d"
    loud = [a for a in RUN if a != "--quiet"]
    assert main(["run", *loud, "--set", "train.lr=1e30", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "diverged" in captured.err and "train.lr" in captured.err
    assert "DIVERGED" in captured.err  # the printed table
    text = (out / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = json.loads(text)
    assert summary["diverged"] is True and summary["diverged_at_s"] is not None
    assert summary["final"]["test_loss_mean"] is None


def test_a_healthy_run_is_not_marked_diverged(tmp_path: Path) -> None:
    import json

    assert main(["run", *RUN, "--out", str(tmp_path / "h")]) == 0
    summary = json.loads((tmp_path / "h" / "summary.json").read_text())
    assert summary["diverged"] is False and summary["diverged_at_s"] is None


def test_merge_accepts_good_node_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _deployment()(tmp_path)
    assert main(["merge", "dep"]) == 0
    assert (tmp_path / "dep" / "summary.json").is_file()


def test_keys_are_private_and_kept_unless_overwrite(tmp_path: Path, capsys) -> None:
    import stat

    kdir = tmp_path / "k"
    assert main(["keys", str(kdir), "--nodes", "2"]) == 0
    secret = kdir / "node-0.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((kdir / "node-0.key").stat().st_mode) == 0o644
    before = secret.read_bytes()
    assert main(["keys", str(kdir), "--nodes", "2"]) == 2
    assert secret.read_bytes() == before
    assert main(["keys", str(kdir), "--nodes", "1", "--overwrite"]) == 0
    assert secret.read_bytes() != before
    assert sorted(p.name for p in kdir.iterdir()) == ["node-0.key", "node-0.key_secret"]
