"""Config loading, overrides, and the one-line errors of every bad-config case."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from peerlearn.cli import main
from peerlearn.config import ConfigError, dump_config, load_config
from peerlearn.config.load import parse_override


def test_quickstart_loads_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.name == "quickstart" and cfg.nodes == 16 and cfg.data.dataset == "digits"
    assert cfg.network.stragglers > 0
    path = tmp_path / "c.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_overrides_use_dotted_keys_and_toml_values() -> None:
    cfg = load_config(
        None, ["train.lr=0.2", "topology.kind=ring", "model.hidden=[8, 8]", "stop.iterations=3"]
    )
    assert cfg.train.lr == 0.2
    assert cfg.topology.kind == "ring"
    assert cfg.model.hidden == [8, 8]
    assert cfg.stop.iterations == 3
    assert parse_override("a.b=hello") == (["a", "b"], "hello")
    assert parse_override('a="x y"') == (["a"], "x y")


BAD = [
    # (override, pieces the one-line message must contain)
    ("train.lr=-1", ["train.lr", "-1", "greater than 0"]),
    ("train.lrr=1", ["train.lrr", "unknown key", "lr"]),
    ("bogus=1", ["bogus", "unknown key", "nodes"]),
    ("nodes=abc", ["nodes", "'abc'", "integer"]),
    ("nodes=1", ["nodes", "1", "greater than or equal to 2"]),
    ("algorithm.name=foo", ["algorithm.name", "'foo'", "dpsgd"]),
    ("algorithm.fanout=3", ["algorithm.fanout", "unknown key"]),
    ("data.dataset=mnist", ["data.dataset", "'mnist'", "digits", "cifar10"]),
    ("model.name=resnet", ["model.name", "'resnet'", "gn_lenet"]),
    ("network.preset=wan", ["network.preset", "'wan'", "stragglers"]),
    ("topology.kind=tree", ["topology.kind", "'tree'", "ring"]),
    ("data.partition=by_user", ["by_user", "movielens"]),
    ("topology.rewire_p=2", ["topology.rewire_p", "2", "less than or equal to 1"]),
    ("compute.factors=[1, 2]", ["compute.factors", "one per node"]),
    ("train=3", ["train", "3"]),
]


@pytest.mark.parametrize(("override", "pieces"), BAD)
def test_bad_config_is_one_clear_line(override: str, pieces: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    msg = str(info.value)
    assert "\n" not in msg
    for piece in pieces:
        assert piece in msg, (piece, msg)


@pytest.mark.parametrize(("override", "pieces"), BAD[:6])
def test_bad_config_cli_exit_status_2_no_traceback(
    override: str, pieces: list[str], tmp_path: Path, capsys
) -> None:
    code = main(["run", "--set", override, "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert pieces[0] in err
    assert not (tmp_path / "r").exists()


def test_bad_toml_file_and_missing_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("nodes = = 3\n")
    assert main(["run", str(bad), "--quiet"]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.toml"), "--quiet"]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_builder_errors_name_their_section(tmp_path: Path, capsys) -> None:
    # a 3-regular graph on 7 nodes cannot exist: caught when the topology is built
    code = main(
        ["run", "--set", "nodes=7", "--set", "topology.degree=3", "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "[topology]" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_dump_is_valid_toml() -> None:
    text = dump_config(load_config(None, ["stop.iterations=5"]))
    assert tomllib.loads(text)["stop"]["iterations"] == 5


def test_set_algorithm_name_drops_the_old_algorithms_keys_with_a_notice(capsys) -> None:
    cfg_path = Path(__file__).resolve().parents[1] / "configs" / "divshare_cifar10_s7_reduced.toml"
    cfg = load_config(cfg_path, ["algorithm.name=adpsgd"])
    assert cfg.algorithm.name == "adpsgd" and cfg.algorithm.fanout == 6  # fanout carries over
    err = capsys.readouterr().err
    assert "fragments" in err and "flush" in err and "adpsgd" in err
    # a key given for the new algorithm on the command line is still checked
    with pytest.raises(ConfigError, match=r"algorithm\.fragments"):
        load_config(cfg_path, ["algorithm.name=adpsgd", "algorithm.fragments=3"])


def test_keys_added_later_are_left_out_of_the_dump_at_their_default() -> None:
    """A run that does not use churn, traces, send buffers or dynamic graphs resolves to the
    same text as before those keys existed (sweeps and checkpoints match runs by that text)."""
    import tomllib

    from peerlearn.config.load import OMITTED_AT_DEFAULT, dump_config, validate

    text = dump_config(load_config(None, []))
    data = tomllib.loads(text)
    for key in OMITTED_AT_DEFAULT:
        *parents, leaf = key.split(".")
        for part in parents:
            data = data.get(part, {})
        assert leaf not in data, key
        data = tomllib.loads(text)
    used = load_config(
        None,
        [
            "network.send_buffer=8192",
            "churn.kind=exponential",
            "churn.round_timeout_s=2",
            "stop.virtual_time_s=10",
        ],
    )
    dumped = dump_config(used)
    assert "send_buffer = 8192" in dumped and "[churn]" in dumped
    assert validate(tomllib.loads(dumped)) == used
