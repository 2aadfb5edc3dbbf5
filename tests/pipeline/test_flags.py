"""Every stage reads its command line one way (pipeline/options.py): its own flags from its
`build_parser()`, everything else (Beam stages) into Beam's PipelineOptions, in one pass; a flag
that neither the stage nor Beam declares exits 2 naming it, before any work. Mostly parsing
here; the last tests hold `make_pipeline`'s two Beam shortcuts (options views made once, Map
DoFn specs computed once), one with a three-element pipeline. No stage runs, no model trains.
"""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from pipeline import cli, preprocess, score, train
from transforms.contracts import EXIT_BAD_INPUT

# Each stage's flags, as documented in README.md: none may be renamed or dropped.
FLAGS = {
    "preprocess": ["input", "output_dir", "text_column", "label_column", "id_column", "format",
                   "csv_delimiter", "multi_label", "label_delimiter", "max_tokens",
                   "min_frequency", "sequence_length", "num_oov_buckets", "eval_fraction",
                   "lowercase", "strip_punctuation", "vocabulary_path", "batch_rows",
                   "features", "ngram_max", "tfidf_max_tokens", "tfidf_min_frequency"],
    "score": ["model_dir", "model_version", "input", "output", "text_column", "id_column",
              "format", "csv_delimiter", "batch_size", "columns", "threshold",
              "max_dead_letter_fraction", "fail_on_drift"],
    "train": ["data_dir", "model_dir", "epochs", "batch_size", "learning_rate",
              "early_stopping_patience", "seed", "shuffle_buffer", "embedding_dim", "dropout",
              "filters", "kernel_size", "pool_size", "lstm_units", "activation", "loss",
              "threshold", "architecture", "l2", "hidden_units", "tensorboard_dir",
              "distribution"],
}  # fmt: skip
MODULES = {"preprocess": preprocess, "score": score, "train": train}
OPTIONS = {
    "preprocess": preprocess.PreprocessOptions,
    "score": score.ScoreOptions,
    "train": train.TrainOptions,
}
BEAM_STAGES = ("preprocess", "score")


def required(stage: str, tmp_path) -> list[str]:
    """The stage's required flags, naming paths that do not exist."""
    return {
        "preprocess": ["--input", str(tmp_path / "corpus.csv"), "--output_dir", str(tmp_path / "out")],
        "score": ["--model_dir", str(tmp_path / "model"), "--input", str(tmp_path / "in.parquet"),
                  "--output", str(tmp_path / "out"), "--text_column", "text"],
        "train": ["--data_dir", str(tmp_path / "data"), "--model_dir", str(tmp_path / "out")],
    }[stage]  # fmt: skip


def exits_2(capsys, argv: list[str]) -> str:
    """Run `textclf ARGV` in this process; it must exit 2. Its stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == EXIT_BAD_INPUT
    return capsys.readouterr().err


@pytest.mark.parametrize("stage", BEAM_STAGES)
def test_a_stage_flag_whose_value_equals_a_beam_flags_value_is_kept(stage, tmp_path):
    argv = [*required(stage, tmp_path), "--text_column", "body", "--job_name", "body"]
    opts, beam = MODULES[stage].parse(argv)
    assert opts.text_column == "body"
    assert beam.view_as(GoogleCloudOptions).job_name == "body"


@pytest.mark.parametrize(
    ("stage", "typo"),
    [("preprocess", ["--text_colum", "body"]), ("score", ["--text_colum=body"]),
     ("train", ["--epoch", "3"])],
)  # fmt: skip
def test_a_misspelled_flag_exits_2_naming_it_before_any_work(stage, typo, tmp_path, capsys):
    # `--text_colum` and `--epoch` are prefixes of real flags: no abbreviations, as in Beam.
    err = exits_2(capsys, [stage, *required(stage, tmp_path), *typo])
    assert err.splitlines() == [err.strip()], "one line"
    assert err.startswith(f"textclf {stage}: unknown flag(s): {typo[0].partition('=')[0]};")
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing checked


@pytest.mark.parametrize(
    ("stage", "typo"),
    [("score", ["--text_colum", "body"]), ("train", ["--data_dr", "data"])],
)  # fmt: skip
def test_a_misspelled_required_flag_is_named_not_reported_missing(stage, typo, tmp_path, capsys):
    real = {"score": "--text_column", "train": "--data_dir"}[stage]
    flags = required(stage, tmp_path)
    at = flags.index(real)
    argv = flags[:at] + flags[at + 2 :]  # the real flag and its value left out
    err = exits_2(capsys, [stage, *argv, *typo])
    assert err.startswith(f"textclf {stage}: unknown flag(s): {typo[0]};"), err
    missing = exits_2(capsys, [stage, *argv])  # without the typo: the real flag is missing
    assert f"the following arguments are required: {real}" in missing


@pytest.mark.parametrize("stage", BEAM_STAGES)
def test_a_stray_value_exits_2_naming_it(stage, tmp_path, capsys):
    # --input takes patterns until the next flag; what follows --runner's value is no one's.
    argv = [*required(stage, tmp_path), "--runner", "FnApiRunner", "more.csv"]
    err = exits_2(capsys, [stage, *argv])
    assert err.startswith(f"textclf {stage}: stray value(s): more.csv;")


@pytest.mark.parametrize("stage", BEAM_STAGES)
def test_a_bad_beam_flag_value_exits_2_in_one_line(stage, tmp_path, capsys):
    err = exits_2(capsys, [stage, *required(stage, tmp_path), "--direct_num_workers", "two"])
    assert err == f"textclf {stage}: argument --direct_num_workers: invalid int value: 'two'\n"


@pytest.mark.parametrize("stage", MODULES)
def test_a_missing_required_flag_exits_2_naming_it(stage, tmp_path, capsys):
    argv = required(stage, tmp_path)
    err = exits_2(capsys, [stage, *argv[2:]])
    assert f"the following arguments are required: {argv[0]}" in err


@pytest.mark.parametrize("stage", BEAM_STAGES)
def test_beam_flags_reach_beams_options_and_only_they_do(stage, tmp_path):
    own = required(stage, tmp_path)
    argv = [*own[:2], "--runner=FnApiRunner", "--direct_num_workers", "2", *own[2:],
            "--temp_location", "X", "--experiments", "a", "--id_column", "a",
            "--experiments", "b"]  # fmt: skip
    opts, beam = MODULES[stage].parse(argv)
    assert beam.view_as(StandardOptions).runner == "FnApiRunner"
    assert beam.view_as(DirectOptions).direct_num_workers == 2
    assert beam.view_as(GoogleCloudOptions).temp_location == "X"
    assert beam.view_as(DebugOptions).experiments == ["a", "b"]
    given = beam.get_all_options(drop_default=True, retain_unknown_options=True)
    assert set(given) == {"runner", "direct_num_workers", "temp_location", "experiments"}
    assert opts.input == [own[own.index("--input") + 1]] and opts.id_column == "a"


@pytest.mark.parametrize("stage", MODULES)
def test_help_lists_every_stage_flag(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([stage, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: textclf {stage} ")
    for flag in FLAGS[stage]:
        assert f"--{flag} " in out or f"--{flag}\n" in out, flag
    if stage in BEAM_STAGES:
        assert "Beam pipeline options (--runner" in " ".join(out.split())


@pytest.mark.parametrize("stage", MODULES)
def test_each_options_class_names_exactly_the_stage_flags(stage, tmp_path):
    parsed = MODULES[stage].parse(required(stage, tmp_path))
    opts = parsed[0] if stage in BEAM_STAGES else parsed
    assert isinstance(opts, OPTIONS[stage])
    assert sorted(vars(opts)) == sorted(FLAGS[stage])
    assert sorted(OPTIONS[stage].__annotations__) == sorted(FLAGS[stage])


def test_stages_parsed_in_one_process_do_not_see_each_others_flags(tmp_path, capsys):
    opts, _ = preprocess.parse(required("preprocess", tmp_path))
    assert opts.output_dir == str(tmp_path / "out")
    train.parse(required("train", tmp_path))
    score.parse(required("score", tmp_path))
    # Beam's own parser, built from every PipelineOptions class loaded, holds no stage flag.
    beam_flags = set(PipelineOptions([]).get_all_options())
    assert beam_flags & {f for flags in FLAGS.values() for f in flags} == set()
    for stage, foreign in [("preprocess", "--model_dir"), ("train", "--text_column"),
                           ("score", "--output_dir"), ("train", "--runner")]:  # fmt: skip
        err = exits_2(capsys, [stage, *required(stage, tmp_path), foreign, "x"])
        assert err.startswith(f"textclf {stage}: unknown flag(s): {foreign};")


def test_the_pipelines_options_views_are_made_once_and_stay_live(tmp_path):
    """make_pipeline's options reuse each view (Beam rebuilds a parser per view_as otherwise):
    one object per class, values written through one view read through every other, through
    get_all_options and through a deep copy (what Beam's Pipeline keeps), and the copy and a
    pickle carry the values, not the views."""
    import copy
    import pickle

    from apache_beam.options.pipeline_options import TypeOptions

    from pipeline.options import make_pipeline

    given = PipelineOptions([f"--temp_location={tmp_path}", "--no_pipeline_type_check"])
    p = make_pipeline(given, threads_by_default=True)
    options = p.options
    assert options.view_as(GoogleCloudOptions) is options.view_as(GoogleCloudOptions)
    assert options.view_as(GoogleCloudOptions).temp_location == str(tmp_path)
    assert options.view_as(TypeOptions).pipeline_type_check is False
    options.view_as(GoogleCloudOptions).temp_location = "/elsewhere"
    assert options.get_all_options()["temp_location"] == "/elsewhere"
    assert PipelineOptions.view_as(options, GoogleCloudOptions).temp_location == "/elsewhere"
    for again in (copy.deepcopy(options), pickle.loads(pickle.dumps(options))):
        assert "_views_made_once" not in vars(again)  # values travel, views are made anew
        assert again.view_as(GoogleCloudOptions).temp_location == "/elsewhere"
        again.view_as(GoogleCloudOptions).temp_location = "/third"
        assert options.view_as(GoogleCloudOptions).temp_location == "/elsewhere"
    # The caller's options hold the same values: make_pipeline's in-process defaults show there.
    assert given.view_as(DirectOptions).direct_num_workers == 0  # Beam's own default is 1
    assert options.view_as(DirectOptions).direct_num_workers == 0


class _CountPerKey(beam.DoFn):
    """A stateful DoFn (a state spec), which the shared Map specs must not hide."""

    COUNT = beam.transforms.userstate.CombiningValueStateSpec("count", sum)

    def process(self, element, count=beam.DoFn.StateParam(COUNT)):
        count.add(1)
        yield element[0], count.read()


class _Scaler:
    def __init__(self, by):
        self.by = by

    def scale(self, x):
        return x * self.by

    __call__ = scale

    def scale_all(self, x):
        return [x * self.by]


def test_map_dofn_specs_are_computed_once_and_equal_beams_own(monkeypatch):
    """make_pipeline's shared specs: for Map/FlatMap/Filter DoFns Beam's function runs once and
    every caller gets an equal copy; a DoFn wrapping a bound method, and a DoFn subclass (the
    ones that can declare state), go to Beam's function every time; the results equal Beam's
    own; and a stateful DoFn still runs as one on the in-process runner. (Pinned to the Beam
    version the sharing was checked against: another version fails here on purpose.)"""
    import functools

    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms import userstate

    from pipeline import options as stage_options
    from pipeline.options import make_pipeline

    p = make_pipeline(PipelineOptions([]))
    assert getattr(userstate.get_dofn_specs, "shares_map_specs", False)
    beams = userstate.get_dofn_specs.__wrapped__
    asked = []

    def counting(dofn):
        asked.append(dofn)
        return beams(dofn)

    monkeypatch.setattr(userstate, "get_dofn_specs", counting)
    stage_options._share_map_dofn_specs()  # wraps `counting`, as it wrapped Beam's function
    shared = userstate.get_dofn_specs
    assert shared is not counting
    maps = [
        beam.Map(len).fn,
        beam.FlatMap(lambda x: [x]).fn,
        beam.Filter(bool).fn,
        beam.Map(functools.partial(max, 0)).fn,
        beam.Map(_Scaler(3)).fn,  # a callable object
    ]
    for dofn in maps * 2:
        assert shared(dofn) == beams(dofn) == (set(), set())
    assert len(asked) == 1
    others = [beam.FlatMap(_Scaler(2).scale_all).fn, _CountPerKey()]  # a bound method; a subclass
    before = len(asked)  # (building the FlatMap asked too: ParDo checks its DoFn)
    for dofn in others * 2:
        assert shared(dofn) == beams(dofn)
    assert len(asked) == before + 4
    assert shared(_CountPerKey()) == ({_CountPerKey.COUNT}, set())
    states, _ = shared(maps[0])
    states.add("mutated by a caller")
    assert shared(maps[1]) == (set(), set())

    with p:
        counted = (
            p
            | beam.Create([("a", 1), ("b", 1), ("a", 1)])
            | beam.Map(lambda kv: kv)
            | beam.ParDo(_CountPerKey())
        )
        assert_that(counted, equal_to([("a", 1), ("a", 2), ("b", 1)]))


_BUNDLES_STARTED: list[int] = []
# The in-process runner on two worker threads, whatever the machine's cores.
_TWO_WORKERS = ["--direct_running_mode=in_memory", "--direct_num_workers=2"]


def _grouped_through(p, count: int, keys: int, dofn: beam.DoFn):
    """range(count) grouped by x % keys, the (key, values) pairs run through `dofn`: a stage
    whose input the runner spreads over its workers."""
    return (
        p
        | beam.Create(range(count))
        | beam.Map(lambda x: (x % keys, x))
        | beam.GroupByKey()
        | beam.ParDo(dofn)
    )


class _RecordBundles(beam.DoFn):
    """Notes each bundle it starts (the in-process runner runs it in this process)."""

    def start_bundle(self):
        _BUNDLES_STARTED.append(1)

    def process(self, element):
        yield element


def test_one_element_stages_run_one_bundle_and_wide_ones_stay_parallel():
    """make_pipeline's runner (one worker per core, at least two here): a stage whose input is
    one element runs one bundle, not one per worker (the others would get nothing); a stage
    whose input spreads over the workers still runs a bundle on each; outputs are complete.
    (Pinned to the Beam version the change was checked against, as above.)"""
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.options import make_pipeline

    two = PipelineOptions(_TWO_WORKERS)
    _BUNDLES_STARTED.clear()
    with make_pipeline(two) as p:
        assert_that(p | beam.Create(["one"]) | beam.ParDo(_RecordBundles()), equal_to(["one"]))
    assert len(_BUNDLES_STARTED) == 1
    assert getattr(fn_runner.ParallelBundleManager.process_bundle, "skips_idle_workers", False)
    _BUNDLES_STARTED.clear()
    with make_pipeline(two) as p:
        wide = _grouped_through(p, 40, 8, _RecordBundles()) | beam.MapTuple(
            lambda key, values: (key, sorted(values))
        )
        assert_that(wide, equal_to([(k, list(range(k, 40, 8))) for k in range(8)]))
    assert len(_BUNDLES_STARTED) == 2  # the grouped stage, split over both workers


class _SamplingPeriod(beam.DoFn):
    """Emits the sampling period of the state sampler tracking this bundle."""

    def process(self, element):
        from apache_beam.runners.worker import statesampler

        yield statesampler.get_current_tracker().sampling_period_ms


def test_bundles_state_samplers_wake_often_so_bundle_ends_do_not_wait():
    """make_pipeline's runner: every bundle's state sampler (the thread a bundle's end joins)
    sleeps SAMPLING_PERIOD_MS at most, not Beam's 200 ms, on both workers. (Pinned to the Beam
    version the change was checked against, as above.)"""
    from apache_beam.runners.worker import statesampler
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.options import SAMPLING_PERIOD_MS, make_pipeline

    assert statesampler.DEFAULT_SAMPLING_PERIOD_MS == 200  # what Beam would use
    with make_pipeline(PipelineOptions(_TWO_WORKERS)) as p:
        periods = _grouped_through(p, 8, 4, _SamplingPeriod()) | beam.Distinct()
        assert_that(periods, equal_to([SAMPLING_PERIOD_MS]))
    assert SAMPLING_PERIOD_MS < statesampler.DEFAULT_SAMPLING_PERIOD_MS
