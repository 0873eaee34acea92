"""The command-line vocabulary every panseg command speaks (runtime/subcommands.py): the help shows the new spellings
only, the old ones still parse to the same values with a one-line deprecation note, and shapes are read by one
HxW / BxHxW parser whose errors read the same in every command."""

from __future__ import annotations

import argparse
import importlib

import pytest

from runtime.cli import SUBCOMMANDS as RUNTIME_SUBCOMMANDS
from runtime.subcommands import bhw_type, hw_type, parse_hw, probability
from runtime.subcommands import build_parser as build_subcommand_parser
from train.prepare.__main__ import SUBCOMMANDS as PREPARE_SUBCOMMANDS


def runtime_parser() -> argparse.ArgumentParser:
    return build_subcommand_parser("panseg-rt", "", RUNTIME_SUBCOMMANDS)


def prepare_parser() -> argparse.ArgumentParser:
    return build_subcommand_parser("python -m train.prepare", "", PREPARE_SUBCOMMANDS)


def module_parser(name: str) -> argparse.ArgumentParser:
    return importlib.import_module(name).build_parser()


PARSERS = {
    "panseg-rt": runtime_parser,
    "train.prepare": prepare_parser,
    "export.onnx": lambda: module_parser("export.onnx.__main__"),
    "export.tensorrt": lambda: module_parser("export.tensorrt.__main__"),
    "train": lambda: module_parser("train.args"),
    "benchmarks.latency": lambda: module_parser("benchmarks.latency"),
    "benchmarks.pq_speed": lambda: module_parser("benchmarks.pq_speed"),
    "benchmarks.demo": lambda: module_parser("benchmarks.demo.__main__"),
}


def help_text(parser_name: str, argv: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        PARSERS[parser_name]().parse_args([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def parse(parser_name: str, argv: list[str]) -> argparse.Namespace:
    """Parse like the command does, including a subcommand's finish_arguments (the deprecated spellings' fold)."""
    args = PARSERS[parser_name]().parse_args(argv)
    subparser = vars(args).pop("_parser", None)
    module = importlib.import_module(args._module) if hasattr(args, "_module") else None
    if module is not None and hasattr(module, "finish_arguments"):
        module.finish_arguments(args, subparser)
    return args


# (parser, argv before --help, spellings the help must show, old spellings it must not show)
HELP_CASES = [
    ("panseg-rt", ["infer"], ["MODEL INPUT... -o DIR", "-o DIR, --output DIR", "--no-progress"],
     ["--engine", "--input"]),
    ("panseg-rt", ["bench"], ["MODEL", "--json FILE", "--shape HxW", "--no-progress"], ["--engine"]),
    ("panseg-rt", ["validate"], ["PANOPTIC_JSON FOLDER"], ["--json", "--folder"]),
    ("panseg-rt", ["eval"], ["--json FILE", "--no-progress", "--gt-json"], []),
    ("train.prepare", ["synthetic"], ["-o OUTPUT, --output OUTPUT"], ["--out "]),
    ("train.prepare", ["detection2panoptic"], ["-o PANOPTIC_JSON, --output PANOPTIC_JSON"], ["--output-json"]),
    ("export.onnx", [], ["checkpoint", "-o OUTPUT, --output OUTPUT", "--json FILE.json", "--no-progress",
                         "--static-shape HxW"], ["--report", "--quiet"]),
    ("export.tensorrt", [], ["onnx", "-o OUTPUT, --output OUTPUT", "--no-progress", "--min-shape BxHxW"],
     ["--quiet"]),
    ("train", [], ["--output_dir OUTPUT_DIR, -o OUTPUT_DIR, --output OUTPUT_DIR", "--no_progress, --no-progress",
                   "print the JSON records on stdout"], []),
    ("benchmarks.latency", [], ["-o OUTPUT, --output OUTPUT", "--plan PLAN", "--onnx-full", "--no-progress"],
     ["--engine", "--quiet", "--out "]),
    ("benchmarks.pq_speed", [], ["--shape HxW", "-o OUTPUT, --output OUTPUT"], ["--size", "--out ", "WIDTH"]),
    ("benchmarks.demo", [], ["-o OUTPUT, --output OUTPUT"], ["--out "]),
]


@pytest.mark.parametrize("parser_name,argv,shown,hidden", HELP_CASES,
                         ids=[f"{c[0]} {' '.join(c[1])}".strip() for c in HELP_CASES])
def test_help_shows_only_the_new_spellings(capsys, parser_name, argv, shown, hidden):
    text = " ".join(help_text(parser_name, argv, capsys).split())  # argparse wraps lines: compare word runs
    for spelling in shown:
        assert spelling in text, spelling
    for spelling in hidden:
        assert spelling not in text, spelling


# (parser, old spelling, new spelling, the old flags that must be named in the deprecation notes)
ALIAS_CASES = [
    ("panseg-rt", ["infer", "--engine", "m.onnx", "--input", "a.jpg", "dir", "--output", "out"],
     ["infer", "m.onnx", "a.jpg", "dir", "-o", "out"], ["--engine", "--input"]),
    ("panseg-rt", ["bench", "--engine", "m.plan", "--shape", "32x48"], ["bench", "m.plan", "--shape", "32x48"],
     ["--engine"]),
    ("panseg-rt", ["validate", "--json", "pan.json", "--folder", "pngs"], ["validate", "pan.json", "pngs"],
     ["--json", "--folder"]),
    ("train.prepare", ["synthetic", "--out", "d", "--train", "3"], ["synthetic", "-o", "d", "--train", "3"],
     ["--out"]),
    ("train.prepare", ["detection2panoptic", "--input-json", "i.json", "--output-json", "p.json",
                       "--categories-json", "c.json"],
     ["detection2panoptic", "--input-json", "i.json", "-o", "p.json", "--categories-json", "c.json"],
     ["--output-json"]),
    ("export.onnx", ["c.pth", "--report", "r.json", "--quiet"], ["c.pth", "--json", "r.json", "--no-progress"],
     ["--report", "--quiet"]),
    ("export.tensorrt", ["m.onnx", "--quiet"], ["m.onnx", "--no-progress"], ["--quiet"]),
    ("benchmarks.latency", ["--out", "o", "--engine", "m.plan", "--quiet"],
     ["-o", "o", "--plan", "m.plan", "--no-progress"], ["--out", "--engine", "--quiet"]),
    ("benchmarks.pq_speed", ["--size", "640x480", "--out", "o"], ["--shape", "480x640", "-o", "o"],
     ["--size", "--out"]),
    ("benchmarks.demo", ["--out", "d"], ["-o", "d"], ["--out"]),
]


@pytest.mark.parametrize("parser_name,old,new,named", ALIAS_CASES,
                         ids=[f"{c[0]} {' '.join(c[3])}" for c in ALIAS_CASES])
def test_old_spellings_parse_to_the_same_values_with_a_deprecation_note(capsys, parser_name, old, new, named):
    capsys.readouterr()
    expected = vars(parse(parser_name, new))
    assert capsys.readouterr().err == ""  # the new spelling is quiet
    got = vars(parse(parser_name, old))
    err = capsys.readouterr().err
    assert {k: v for k, v in got.items() if not k.startswith("legacy_")} == \
           {k: v for k, v in expected.items() if not k.startswith("legacy_")}
    notes = err.splitlines()
    assert len(notes) == len(named)
    for flag, note in zip(named, notes, strict=True):
        assert f": warning: {flag} is deprecated" in note and "; use " in note


def test_train_aliases_are_not_deprecated(capsys):
    detr = vars(parse("train", ["--output_dir", "runs/a", "--no_progress"]))
    kebab = vars(parse("train", ["-o", "runs/a", "--no-progress"]))
    assert detr == kebab and detr["output_dir"] == "runs/a" and detr["progress"] is False
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv,message", [
    (["infer", "m.onnx", "-o", "out"], "required: MODEL INPUT..."),
    (["infer", "m.onnx", "a.jpg"], "required: -o/--output"),
    (["bench"], "required: MODEL"),
    (["bench", "a.onnx", "--engine", "b.onnx"], "give the model once"),
    (["validate", "pan.json"], "PANOPTIC_JSON FOLDER"),
])
def test_missing_or_doubled_positionals_are_one_line_usage_errors(capsys, argv, message):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        parse("panseg-rt", argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err
    assert err.splitlines()[-1].startswith(f"panseg-rt {argv[0]}: error: ")


def test_inputs_may_follow_the_options(tmp_path, capsys):
    from runtime.cli import main

    # a.jpg does not exist: the command names it as a missing input, so it reached the command as an input
    code = main(["infer", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), str(tmp_path / "a.jpg")])
    err = capsys.readouterr().err
    assert code == 1 and err == f"panseg-rt infer: error: {tmp_path / 'a.jpg'}: no such file or folder\n"
    with pytest.raises(SystemExit) as info:
        main(["infer", "m.onnx", "a.jpg", "-o", "out", "--no-such-flag"])
    assert info.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_a_required_output_given_by_its_old_spelling_only_is_still_required_when_absent(capsys):
    with pytest.raises(SystemExit) as info:
        parse("benchmarks.latency", [])
    assert info.value.code == 2 and "required: -o/--output" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("text,expected", [("800x1066", (800, 1066)), (" 32 X 48 ", (32, 48)), ("1x1", (1, 1))])
def test_hw_is_height_then_width(text, expected):
    assert parse_hw(text) == expected


@pytest.mark.parametrize("text,message", [
    ("64", "expected 2 numbers HxW (height x width, e.g. 800x1066), got 1 in '64'"),
    ("axb", "expected HxW (height x width, e.g. 800x1066), got 'axb'"),
    ("", "expected HxW (height x width, e.g. 800x1066), got ''"),
    ("0x10", "expected HxW (height x width, e.g. 800x1066) with height at least 1, width at least 1, got '0x10'"),
])
def test_hw_errors_say_what_was_expected(text, message):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse_hw(text)
    assert str(info.value) == message


def test_bounds_are_named_in_the_errors():
    with pytest.raises(argparse.ArgumentTypeError, match="height at least 32, width at least 32, got '16x800'"):
        hw_type(32)("16x800")
    with pytest.raises(argparse.ArgumentTypeError, match="batch at least 1, height at least 32"):
        bhw_type(32)("0x800x800")
    assert bhw_type(32)("2x32x64") == (2, 32, 64)


# (parser, argv before the shape, the shape flag): every HxW flag of every command
HW_FLAGS = [
    ("panseg-rt", ["bench", "m.onnx"], "--shape"),
    ("export.onnx", ["c.pth"], "--static-shape"),
    ("benchmarks.pq_speed", ["-o", "o"], "--shape"),
]


@pytest.mark.parametrize("bad", ["64", "axb", "800x1066x3"])
def test_hw_errors_read_the_same_in_every_command(capsys, bad):
    messages = set()
    for parser_name, argv, flag in HW_FLAGS:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            parse(parser_name, [*argv, flag, bad])
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1, (parser_name, err)
        assert f"error: argument {flag}: expected " in err
        messages.add(err.split(f"argument {flag}: ", 1)[1].split(" (see ")[0])
    assert len(messages) == 1, messages


def test_bhw_errors_read_like_hw_errors(capsys):
    with pytest.raises(SystemExit) as info:
        parse("export.tensorrt", ["m.onnx", "--opt-shape", "800x1066"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "argument --opt-shape: expected 3 numbers BxHxW (batch x height x width, e.g. 1x800x1066), got 2" in err


@pytest.mark.parametrize("text", ["-0.1", "1.5", "nan", "x"])
def test_probabilities_are_checked_by_argparse(capsys, text):
    with pytest.raises(argparse.ArgumentTypeError, match="a probability in \\[0, 1\\]"):
        probability(text)
    with pytest.raises(SystemExit) as info:
        parse("panseg-rt", ["infer", "m.onnx", "a.jpg", "-o", "out", "--threshold", text])
    assert info.value.code == 2 and "argument --threshold: expected a probability" in capsys.readouterr().err
