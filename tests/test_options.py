"""The one options definition (``icface_video/options.py``): the command line, ``batch`` job
fields, the API and the render defaults all come from it and agree; and the one planner."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import click
import numpy as np
import pytest

from icface_video import options as O
from icface_video.cli import cli
from icface_video.errors import UsageError

REENACT = cli.commands["reenact"]


def _field_of(param: click.Parameter) -> str:
    """The option name of a click parameter: its long flag without dashes (``--x264-preset`` -> x264_preset)."""
    flag = next(o for o in param.opts if o.startswith("--"))
    return flag[2:].replace("-", "_")


def _params(command: click.Command) -> dict[str, click.Parameter]:
    return {_field_of(p): p for p in command.params if isinstance(p, click.Option) and p.name != "help"}


def test_every_reenact_option_is_a_batch_field_and_back():
    cli_names = set(_params(REENACT))
    assert cli_names - set(O.CLI_ONLY) == set(O.BATCH_FIELDS)          # every reenact option is a job field ...
    assert set(O.BATCH_FIELDS) <= cli_names                            # ... and every job field a reenact option
    assert set(O.CLI_ONLY) <= cli_names                                 # the documented exceptions exist
    assert {n for n in O.FIELD_NAMES if not O.option_spec(n).batch} <= set(O.CLI_ONLY)
    assert "eyelids" in O.BATCH_FIELDS                                  # the field batch lacked
    from icface_video import api, batch

    assert batch.FIELDS == O.BATCH_FIELDS
    assert set(api.EXTRA_OPTIONS) <= set(O.CLI_ONLY)                   # the API takes the job fields plus these


def _click_bounds(param: click.Option):
    t = param.type
    return getattr(t, "min", None), getattr(t, "max", None), bool(getattr(t, "min_open", False))


@pytest.mark.parametrize("command", ["reenact", "animate", "edit", "neutralize", "batch", "extract"])
def test_click_ranges_choices_defaults_agree_with_the_definition(command):
    """Every option a command shares with the definition has its range, choices, default and
    help (unless the command words it for itself) as defined."""
    params = _params(cli.commands[command])
    shared = [n for n in params if n in O.FIELD_NAMES]
    assert shared or command == "extract"
    own = {"animate": {"duration"}, "extract": {"face_index"},  # options of their own
           "batch": {"source", "driving"}}.get(command, set())
    for name in shared:
        if name in own:
            continue
        spec, param = O.option_spec(name), params[name]
        if spec.kind in ("int", "float"):
            low, high, low_open = _click_bounds(param)
            assert (low, high, low_open) == (spec.low, spec.high, spec.low_open), name
        if spec.kind in ("choice", "device"):
            assert tuple(param.type.choices) == spec.choices, name
        if not param.required and not param.multiple:
            assert param.default == getattr(O.DEFAULTS, name), name
        if command == "reenact":
            assert param.help == spec.help, name
        if spec.kind == "choice":  # e.g. the x264 presets, written once: batch takes what click takes
            assert all(O.parse_value(name, c) == c for c in param.type.choices), name


@pytest.mark.parametrize("name", [n for n in O.BATCH_FIELDS if O.option_spec(n).kind in ("int", "float")])
def test_batch_number_checks_are_the_cli_ranges(name, run_cli):
    """At each bound and just outside it, a job-file value and the command line agree."""
    spec = O.option_spec(name)
    step = 1 if spec.kind == "int" else 1e-6
    cases = []
    if spec.low is not None:
        cases += [(spec.low, not spec.low_open), (spec.low - step, False)]
    if spec.high is not None:
        cases += [(spec.high, True), (spec.high + step, False)]
    cases += [("nan", False), ("inf", False)] if spec.kind == "float" else [("2.5", False)]
    for value, ok in cases:
        text = str(int(value) if spec.kind == "int" and not isinstance(value, str) else value)
        try:
            O.parse_value(name, text)
            batch_ok = True
        except ValueError as exc:
            batch_ok = False
            assert "expected" in str(exc) and repr(text) in str(exc)
        param = _params(REENACT)[name]
        try:
            param.type.convert(text, param, None)
            cli_ok = True
        except click.BadParameter:
            cli_ok = False
        assert batch_ok == cli_ok == ok, (name, text, batch_ok, cli_ok)


def test_the_dataclass_checks_its_values_and_lists_its_metadata():
    with pytest.raises(UsageError, match=r"^crf: expected an integer within 0..51, got 99$"):
        O.ReenactOptions(crf=99)
    with pytest.raises(UsageError, match="x264_preset: expected one of ultrafast"):
        O.ReenactOptions(x264_preset="warp")
    with pytest.raises(UsageError, match="eyelids: expected true/false"):
        O.ReenactOptions(eyelids="no")
    with pytest.raises(UsageError, match="duration: expected a number > 0"):
        O.DEFAULTS.replace(duration=0.0)
    opts = O.ReenactOptions(source=Path("a.jpg"), preset=["smile"], mouth_from="m.csv", device="cuda:1", crf=20.0)
    assert (opts.source, opts.preset, opts.parts, opts.device, opts.crf) == ("a.jpg", ("smile",), {"mouth": "m.csv"},
                                                                           "cuda:1", 20)
    listed = O.describe()
    assert [d["name"] for d in listed] == list(O.FIELD_NAMES)
    json.dumps(listed)  # plain data, for a web page
    crf = next(d for d in listed if d["name"] == "crf")
    assert crf == {"name": "crf", "type": "int", "default": 18, "range": [0, 51], "low_open": False, "choices": None,
                   "help": "x264 quality (lower = better).", "flag": "--crf", "group": "encode", "batch": True}
    assert next(d for d in listed if d["name"] == "renderer")["choices"] == ["geometry", "network"]


def test_defaults_of_jobs_render_options_and_api_are_the_definitions():
    from icface_video.api import Reenactor
    from icface_video.encode import EncodeConfig
    from icface_video.jobs import ReenactJob, render_options
    from icface_video.paste import PasteConfig
    from icface_video.reenact import RenderOptions
    from icface_video.smoothing import SmoothConfig

    d = O.DEFAULTS
    assert render_options(d) == RenderOptions()  # the render loop's own defaults are the options'
    enc, paste, smooth = EncodeConfig(), PasteConfig(), SmoothConfig()
    assert (enc.crf, enc.preset, enc.audio, enc.codec, enc.alpha) == (d.crf, d.x264_preset, not d.no_audio, d.codec,
                                                                       d.alpha)
    assert paste.color_match == d.color_match and (smooth.method, smooth.strength) == (d.smooth, d.smooth_strength)
    job = ReenactJob(source="a.jpg", output="o.mp4")
    assert (job.mode, job.relative, job.face_index, job.source_face, job.driver_face, job.start, job.duration,
            job.eyelids, job.smoothing) == (d.mode, d.relative, d.face_index, d.source_face, d.driver_face, d.start,
                                            d.duration, d.eyelids, smooth)
    for name, p in inspect.signature(Reenactor.__init__).parameters.items():
        if name in O.FIELD_NAMES and name != "source":  # (a picture there)
            assert p.default == getattr(d, name), name


def test_batch_takes_eyelids_and_reports_each_bad_field(run_cli, media, workdir):
    from icface_video import batch as B

    rows = [(2, {"source": str(media["photo"]), "driving": str(media["short"]), "eyelids": "false"}),
            (3, {"source": str(media["photo"]), "driving": str(media["short"]), "eyelids": "maybe", "crf": "99",
                 "mode": "sideways", "face_index": "1.5"})]
    specs, problems = B.validate(rows, workdir, workdir / "out")
    assert [s.row for s in specs] == [2] and specs[0].fields["eyelids"] is False
    assert B.to_reenact_job(specs[0]).eyelids is False
    assert sorted(str(p) for p in problems) == [
        "row 3: crf: expected an integer within 0..51, got '99'",
        "row 3: eyelids: expected true/false, got 'maybe'",
        "row 3: face_index: expected an integer within 0..64, got '1.5'",
        "row 3: mode: expected one of full, pose, expression, got 'sideways'"]
    jobs = workdir / "jobs.csv"
    jobs.write_text(f"source,driving,eyelids,crf\n{media['photo']},{media['short']},no,18\n"
                    f"{media['photo']},{media['short']},perhaps,77\n")
    r = run_cli(["batch", jobs, "-o", workdir / "out", "--dry-run"])
    assert r.exit_code == 3, r.stderr  # invalid job file: every problem, nothing runs
    assert "row 3: eyelids: expected true/false" in r.stderr and "row 3: crf:" in r.stderr
    assert "row 2" not in r.stderr and not (workdir / "out").exists()


def _frames(path: Path) -> np.ndarray:
    from icface_video.media import iter_frames

    return np.stack([f.rgb for f in iter_frames(path)]).astype(np.int16)


def test_batch_eyelids_field_renders_like_the_cli_flag(run_cli, media, workdir):
    """Shipped model (it has eyelids.json), eyes driven shut (AU45=5): a job with
    ``eyelids = false`` renders what ``reenact --no-eyelids`` does, one without the field
    what ``reenact`` does, and the two differ."""
    jobs = workdir / "jobs.jsonl"
    row = {"source": str(media["photo"]), "driving": str(media["short"]), "set": "AU45=5", "x264_preset": "ultrafast"}
    jobs.write_text(json.dumps(dict(row, output="lids.mp4")) + "\n"
                    + json.dumps(dict(row, output="nolids.mp4", eyelids=False)) + "\n")
    out = workdir / "out"
    r = run_cli(["batch", jobs, "-o", out, "--quiet"])
    assert r.exit_code == 0, r.stderr
    for flag in ("--eyelids", "--no-eyelids"):
        r = run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "--set", "AU45=5", flag,
                     "--x264-preset", "ultrafast", "-o", workdir / f"cli{flag}.mp4", "--quiet"])
        assert r.exit_code == 0, r.stderr
    lids, no_lids = _frames(out / "lids.mp4"), _frames(out / "nolids.mp4")
    assert lids.shape == no_lids.shape == (16, 256, 256, 3)
    assert np.abs(lids - _frames(workdir / "cli--eyelids.mp4")).mean() < 0.5       # the same renders
    assert np.abs(no_lids - _frames(workdir / "cli--no-eyelids.mp4")).mean() < 0.5
    assert np.abs(lids - no_lids).mean() > 0.2                                     # the field changes the render


def test_animate_is_planned_by_the_one_planner(media):
    """``animate``'s attributes come from :func:`jobs.plan_attributes` (no model needed): the
    frame count from duration x fps, a timeline-less preset ramped in and out, ``--set`` last."""
    from fractions import Fraction

    from icface_video.attributes import ATTR_NAMES
    from icface_video.jobs import AnimateJob, animate_job, plan_attributes

    opts = O.ReenactOptions(source=str(media["photo"]), output="x.mp4", preset=("smile",), set=("yaw=10deg",))
    job = animate_job(opts, None, duration=2.0, fps=29.97, ramp=0.25)
    assert isinstance(job, AnimateJob) and job.fps == Fraction(30000, 1001) and not job.render.encode.audio
    plan = plan_attributes(job, 128)
    au12, yaw = ATTR_NAMES.index("AU12"), ATTR_NAMES.index("yaw")
    n = round(2.0 * 30000 / 1001)
    assert plan.attrs.shape == (n, 20) and plan.fps == Fraction(30000, 1001) and plan.audio_from is None
    assert np.allclose(plan.times, np.arange(n) / (30000 / 1001))
    smile = job.presets[0].apply(plan.source.attrs[None], plan.times[:1], 1.0)[0, au12]
    own = plan.source.attrs[au12]
    assert abs(smile - own) > 0.2, (smile, own)
    assert abs(plan.attrs[0, au12] - own) < 1e-4                        # the ramp starts at the photo's own mouth
    assert abs(plan.attrs[n // 2, au12] - smile) < 1e-4                 # the preset at full weight mid-way
    assert abs(plan.attrs[n // 8, au12] - own) < abs(smile - own)       # ramping in
    assert np.allclose(plan.attrs[:, yaw], np.radians(10), atol=1e-5)   # --set applies to every frame
    with pytest.raises(UsageError, match="animate needs"):
        animate_job(O.ReenactOptions(source="a.jpg", output="x.mp4"), None, None, 25, 0.25)
