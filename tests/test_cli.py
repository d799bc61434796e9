"""The `sslfast` command line: help, configuration files and overrides, errors, subcommands."""
import json
import subprocess
import sys

import pytest

from sslfast import cli
from sslfast.train.config import PretrainConfig


def run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "sslfast.cli", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def test_help_lists_the_commands_and_reads_well():
    out = run("--help")
    assert out.returncode == 0
    for command in ("pretrain", "knn", "bench", "preview-aug", "info"):
        assert command in out.stdout
    assert "sslfast pretrain --resume" in out.stdout  # the examples


def test_pretrain_help_shows_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    for flag in ("--data PATH", "--method METHOD", "--backbone BACKBONE", "--effective-batch N", "--optimizer",
                 "--schedule", "--precision", "--compile", "--resume RUN", "--config FILE", "--method-option"):
        assert flag in text, flag
    assert "(default: simclr)" in text and "(default: resnet18)" in text


def test_every_config_field_has_a_flag():
    parser = cli.build_parser()
    flags = {a.dest for a in parser._subparsers._group_actions[0].choices["pretrain"]._actions}
    assert set(PretrainConfig.__dataclass_fields__) - {"extra"} <= flags


def test_config_file_then_command_line_overrides(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("method: vicreg\nepochs: 30\nbatch-size-is-not-a-key: 1\n")
    assert cli.main(["pretrain", "--config", str(config), "--print-config"]) == 1
    assert "unknown config key(s) ['batch_size_is_not_a_key']" in capsys.readouterr().err
    config.write_text("method: vicreg\nepochs: 30\nlr: 0.5\nextra: {lambda_param: 10.0}\n")
    assert cli.main(["pretrain", "--config", str(config), "--epochs", "5", "--no-channels-last",
                     "--method-option", "mu_param=20", "--print-config"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["method"] == "vicreg" and values["epochs"] == 5 and values["lr"] == 0.5
    assert values["channels_last"] is False and values["extra"] == {"lambda_param": 10.0, "mu_param": 20}
    json_config = tmp_path / "run.json"
    json_config.write_text(json.dumps({"backbone": "vit-small", "crop_size": 96}))
    assert cli.main(["pretrain", "--config", str(json_config), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["backbone"] == "vit-small"


@pytest.mark.parametrize("args,message", [
    (["--method", "byol"], "method must be one of"),
    (["--backbone", "resnet101"], "backbone must be one of"),
    (["--data", "/no/such/folder"], "data: '/no/such/folder' is not a folder"),
    (["--lr", "-1"], "lr must be a finite number > 0"),
    (["--config", "/no/such.yaml"], "config file '/no/such.yaml' does not exist"),
    (["--resume", "/no/such/run"], "--resume: no checkpoint"),
    (["--method-option", "lambda"], "--method-option expects KEY=VALUE"),
])
def test_bad_input_exits_1_with_a_message_naming_it(args, message, capsys):
    assert cli.main(["pretrain", *args, "--print-config"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sslfast: error: ") and message in err


def test_knn_names_its_own_argument_for_a_missing_checkpoint(capsys):
    assert cli.main(["knn", "/no/such/run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sslfast: error: checkpoint: no checkpoint at '/no/such/run'"), err
    assert "--resume" not in err


def test_a_wrong_type_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pretrain", "--epochs", "many"])
    assert exit_info.value.code == 2 and "--epochs: invalid int value: 'many'" in capsys.readouterr().err


def test_resume_refuses_options_that_change_the_run(tmp_path, capsys):
    from sslfast.train import checkpoint as ckpt

    run_dir = tmp_path / "run"
    config = PretrainConfig(out=str(run_dir)).to_dict()
    ckpt.save_atomic({"format": ckpt.FORMAT, "version": ckpt.VERSION, "config": config}, str(run_dir / "last.pt"))
    assert cli.main(["pretrain", "--resume", str(run_dir), "--lr", "0.1"]) == 1
    assert "these options would change it: --lr" in capsys.readouterr().err
    assert cli.main(["pretrain", "--resume", str(run_dir), "--epochs", "40", "--print-config"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["epochs"] == 40 and values["out"] == str(run_dir)


def test_info_and_bench_list():
    out = run("info")
    assert out.returncode == 0 and "similarity_lse" in out.stdout
    out = run("bench", "--list")
    assert out.returncode == 0 and "bench_pretrain.py" in out.stdout
    out = run("bench", "--only", "no-such-bench")
    assert out.returncode == 2 and "no bench script matches" in out.stderr


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "pretrain" in capsys.readouterr().out
