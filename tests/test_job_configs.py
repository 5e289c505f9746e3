"""Each job's parameters are stated once: the command line and the deployment are derived from its config model."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import UserInputError
from flows.config_loader import ConfigError, field_at, load_config
from flows.jobs import TileJob

REPO = Path(__file__).resolve().parents[1]


def _commands():
    from flows import distill, embed, evaluate, register_plism, robustness, tile_tcga
    from flows.jobs import DistillJob, EmbedJob, EvaluateJob, PlismJob, RobustnessJob

    return {
        "tile": (tile_tcga, TileJob, {"slides": "s", "out": "o"}, {}),
        "register-plism": (register_plism, PlismJob, {"slides": "s", "out": "o"}, register_plism.PRESET),
        "embed": (embed, EmbedJob, {"tiles": "t", "out": "o", "model": "h0-mini"}, {}),
        "evaluate": (evaluate, EvaluateJob, {"embeddings": "e", "labels": "l", "out": "o", "task": "regression"}, {}),
        "distill": (distill, DistillJob, {"tiles": ["t"], "out": "o"}, {}),
        "robustness": (robustness, RobustnessJob, {"embeddings": ["e"], "out": "o"}, {}),
    }


def test_loader_order_is_defaults_then_file_then_overrides_then_flags(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("slides: a\nout: b\ntiling:\n  tile_size_px: 256\n  threads: 3\n  tissue:\n    closing_um: 10\n")
    job = load_config(
        TileJob,
        config,
        ["tiling.threads=4", "tiling.qc.min_tissue_fraction=0.3"],
        {"tiling.threads": 5, "workers": None},
    )
    assert job.tiling.tile_size_px == 256 and job.tiling.threads == 5
    assert job.tiling.tissue.closing_um == 10 and job.tiling.qc.min_tissue_fraction == 0.3
    assert job.tiling.target_mpp_um == 0.5  # the paper's default, untouched


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tiling.tissue.closing=3"], "unknown key tiling.tissue.closing (did you mean tiling.tissue.closing_um?)"),
        (["tiling.tile_size_px=big"], "tiling.tile_size_px: Input should be a valid integer"),
        (["tiling=3"], "tiling: "),
        (["workers"], "'workers' is not key=value"),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_it(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(TileJob, None, ["slides=a", "out=b", *overrides])
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["tile", "register-plism", "embed", "evaluate", "distill", "robustness"])
def test_cli_flags_and_deployment_form_derive_from_the_job_model(name):
    """The drift check: flags set real fields and add no defaults; the deployment form is the model itself."""
    from flows.cli import job_parser
    from flows.config_loader import config_from_args
    from flows.deployments import DEPLOYMENTS, build_deployment

    module, model, required, preset = _commands()[name]
    for dotted in module.FLAGS.values():
        field_at(model, dotted)  # every flag sets a real field
    args = job_parser("test", "", model, module.FLAGS).parse_intermixed_args(
        [a for key, value in required.items() for a in (f"--{key}", *([value] if isinstance(value, str) else value))]
    )
    # No flag has a default of its own; the command's preset is the deployment's.
    assert config_from_args(model, args, module.FLAGS, preset) == model(**required, **preset)
    spec = next(s for s in DEPLOYMENTS if s.job is model and s.preset == preset)
    schema = build_deployment(spec)._parameter_openapi_schema.model_dump()
    assert list(schema["properties"]) in (["job"], ["job", "progress_bar"])  # the bar: a terminal's, off when served
    definition = schema["definitions"][model.__name__]
    assert set(definition["properties"]) == set(model.model_fields)
    for field, info in model.model_fields.items():
        if not info.is_required() and info.default_factory is None:
            default = info.get_default()
            default = default.model_dump(mode="json") if hasattr(default, "model_dump") else default
            assert definition["properties"][field].get("default") == (
                list(default) if isinstance(default, tuple) else default
            ), field


# Per command, its mistakes and the one line each must answer with. The first of each command is also run
# as the real command line, in a process of its own.
TYPOS = [
    ("flows.tile_tcga", ["--slides", "{tmp}/missing", "--out", "{tmp}/o.zarr"], "no such file or folder"),
    ("flows.tile_tcga", ["--slides", "{tmp}", "--out", "{tmp}/o.zarr", "tiling.tile_sise_px=3"], "unknown key"),
    ("flows.tile_tcga", ["--slides", "{tmp}", "--out", "{tmp}/o.zarr", "--tile-size", "x"], "invalid int value"),
    (
        "flows.tile_tcga",
        ["--slides", "{tmp}", "--out", "{tmp}/o.zarr", "--config", "{tmp}/bad.yaml"],
        "unknown key",
    ),
    ("flows.tile_tcga", ["--out", "{tmp}/o.zarr"], "slides is required (give --slides)"),
    ("flows.register_plism", ["--slides", "{tmp}/missing", "--out", "{tmp}/o.zarr"], "no such file or folder"),
    ("flows.register_plism", ["--slides", "{tmp}", "--out", "{tmp}/o.zarr"], "no slide in"),
    (
        "flows.extract_plism",
        ["--slides", "{tmp}", "--out", "{tmp}/o", "--set", "registration.stages=[x]"],
        "registration.stages.0: Input should be 'rigid', 'affine' or 'bspline'",
    ),
    (
        "flows.register_plism",
        ["--slides", "{tmp}", "--out", "{tmp}/o", "--set", "refinement.max_shift_um=far"],
        "refinement.max_shift_um: Input should be a valid number",
    ),
    ("flows.extract_plism", ["--slides", "{tmp}", "--out", "{tmp}/o", "--config", "{tmp}/bad.yaml"], "unknown key"),
    ("flows.extract_plism", ["--slides", "{tmp}", "--out", "{tmp}/o", "--refine", "yes"], "'yes' is not key=value"),
    ("flows.embed", ["--tiles", "{tmp}/missing", "--out", "{tmp}/e", "--model", "h0-mini"], "no such file"),
    ("flows.embed", ["--tiles", "{tmp}", "--out", "{tmp}/e", "--model", "h0mini"], "did you mean h0-mini?"),
    (
        "flows.embed",
        ["--tiles", "{tmp}", "--out", "{tmp}/e", "--model", "h0-mini", "--batch-size", "0"],
        "batch_size: Input should be greater than 0",
    ),
    ("flows.embed", ["--tiles", "{tmp}", "--out", "{tmp}/e", "--model", "h0-mini", "--device", "gpu"], "device: "),
    ("flows.embed", ["--tiles", "{tmp}", "--out", "{tmp}/e", "--config", "{tmp}/bad.yaml"], "unknown key"),
    (
        "flows.evaluate",
        ["--embeddings", "{tmp}/missing", "--labels", "{tmp}/bad.yaml", "--out", "{tmp}/r", "--task", "regression"],
        "--embeddings {tmp}/missing: no such file",
    ),
    (
        "flows.evaluate",
        ["--embeddings", "{tmp}", "--labels", "{tmp}/bad.yaml", "--out", "{tmp}/r", "--task", "regresion"],
        "argument --task: invalid choice",
    ),
    (
        "flows.evaluate",
        ["--embeddings", "{tmp}", "--labels", "{tmp}/bad.yaml", "--out", "{tmp}/r"],
        "task is required (give --task)",
    ),
    (
        "flows.distill",
        ["--tiles", "{tmp}/missing", "--out", "{tmp}/run", "--config", "configs/distill/tiny-cpu.yaml"],
        "--tiles {tmp}/missing: no such file",
    ),
    (
        "flows.distill",
        ["--tiles", "{tmp}", "--out", "{tmp}/run", "train.iteration=3"],
        "unknown key train.iteration (did you mean train.iterations?)",
    ),
    ("flows.distill", ["--tiles", "{tmp}", "--out", "{tmp}/run", "--set", "optim.base_lr=fast"], "optim.base_lr: "),
    ("flows.distill", ["--tiles", "{tmp}", "--out", "{tmp}/run", "--config", "{tmp}/bad.yaml"], "unknown key"),
    ("flows.distill", ["--tiles", "{tmp}", "--out", "{tmp}/run", "--device", "gpu"], "invalid choice: 'gpu'"),
    ("flows.robustness", ["--embeddings", "{tmp}/missing", "--out", "{tmp}/r"], "no such file or folder"),
    ("flows.robustness", ["--embeddings", "{tmp}", "--out", "{tmp}/r", "--ks", "0"], "greater than 0"),
    ("flows.robustness", ["--embeddings", "{tmp}", "--out", "{tmp}/r", "--label", "a", "b"], "2 labels for 1"),
    (
        "flows.robustness",
        ["--embeddings", "{tmp}", "--out", "{tmp}/r", "--config", "{tmp}/bad.yaml"],
        "unknown key",
    ),
    ("flows.serve", ["--config", "{tmp}/bad.yaml"], "unknown key tile_size_px"),
    ("flows.serve", ["tile.cron=x"], "unknown key tile"),
    ("flows.serve", ["tile-tcga.parameters.slide=x"], "deployments.tile-tcga.parameters.slide: unknown key"),
    ("flows.serve", ["--only", "tile"], "no deployment tile;"),
    ("flows.serve", ["--limit", "many"], "invalid int value"),
]
UNREACHABLE_API = "http://127.0.0.1:9/api"  # a server that is never reached: validation comes first


@pytest.mark.parametrize(("module", "argv", "message"), TYPOS)
def test_a_typo_is_one_line_and_exit_2_before_prefect_starts(tmp_path, monkeypatch, capfd, module, argv, message):
    """Each command's ``main``, called in this process as ``python -m`` calls it: a process per case cost
    ~25 s of the fast lane. Reaching the flow run fails the test; the API address is unreachable besides.
    """
    import flows.cli

    def reached(*args, **kwargs):
        raise AssertionError("the typo reached the flow run")

    (tmp_path / "bad.yaml").write_text("tile_size_px: 256\n")
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(flows.cli, "run_flow_command", reached)
    monkeypatch.setenv("PREFECT_API_URL", UNREACHABLE_API)
    try:
        code = importlib.import_module(module).main([a.format(tmp=tmp_path) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    stderr = capfd.readouterr().err
    assert code == 2
    assert "Traceback" not in stderr and message.format(tmp=tmp_path) in stderr
    assert len(stderr.strip().splitlines()) == 1


FIRST_TYPOS = {module: (argv, message) for module, argv, message in reversed(TYPOS)}


@pytest.mark.parametrize(
    ("module", "argv", "message"), [(m, *FIRST_TYPOS[m]) for m in FIRST_TYPOS], ids=list(FIRST_TYPOS)
)
def test_each_command_line_answers_its_first_typo_in_one_line_and_exit_2(tmp_path, module, argv, message):
    """The real ``python -m`` entry point of each command; the < 2 s goal is measured by benchmarks/typo_exits.py."""
    (tmp_path / "bad.yaml").write_text("tile_size_px: 256\n")
    done = subprocess.run(
        [sys.executable, "-m", module, *(a.format(tmp=tmp_path) for a in argv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=_no_prefect_env(),
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and message.format(tmp=tmp_path) in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_extract_plism_help_names_itself():
    done = subprocess.run(
        [sys.executable, "-m", "flows.extract_plism", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m flows.extract_plism")


def _no_prefect_env():
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_API_URL"] = UNREACHABLE_API
    return env


def test_the_project_model_names_known_without_torch_are_the_registry_s():
    from flows.checks import PROJECT_MODELS
    from pipeline.models.registry import MODEL_SPECS

    assert set(PROJECT_MODELS) == set(MODEL_SPECS)


def test_one_embedding_batch_size_default_whatever_the_entry_point():
    """The flow, the deployment and ``torchrun -m pipeline.embed`` all leave it to EmbeddingSettings."""
    from flows.jobs import EmbedJob
    from pipeline.embed import EmbeddingSettings

    assert EmbedJob.model_fields["batch_size"].default is None
    assert EmbeddingSettings("h0-mini", device="cpu").batch_size == 32
    assert EmbeddingSettings("h0-mini", device="cuda:1").batch_size == 256
    assert EmbeddingSettings("h0-mini", device="cuda", batch_size=8).batch_size == 8
    job = EmbedJob(tiles="t", out="o", model="tiny-student", device="cpu")
    assert (job.settings().batch_size, job.settings().loader_workers) == (32, 0)


def test_distillpath_subcommands_run_the_module_commands(capsys, tmp_path):
    from flows.distillpath import COMMANDS, main

    assert main(["tile", "--slides", str(tmp_path / "missing"), "--out", str(tmp_path / "o.zarr")]) == 2
    assert capsys.readouterr().err.strip() == f"tile: --slides {tmp_path / 'missing'}: no such file or folder"
    assert main(["tyle"]) == 2 and "no command 'tyle'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["extract-plism", "--help"])
    assert capsys.readouterr().out.startswith("usage: distillpath extract-plism")
    assert main(["info", str(tmp_path)]) == 2  # dispatched to flows.inspect's own "info" subcommand
    assert "not a distillpath store" in capsys.readouterr().err
    for module, _ in COMMANDS.values():
        __import__(module)  # each subcommand's module exists and has a main
        assert callable(sys.modules[module].main)


def test_the_validation_path_imports_neither_torch_prefect_dask_nor_elastix():
    """What every command runs before its checks: the job models, the loader and the command-line modules."""
    modules = "flows.jobs, flows.config_loader, flows.cli, flows.checks, flows.distillpath, flows.serve"
    modules += ", flows.tile_tcga, flows.register_plism, flows.embed, flows.distill, flows.robustness, flows.evaluate"
    heavy = ["torch", "prefect", "dask", "distributed", "itk", "cv2", "timm", "zarr"]
    code = f"import sys, {modules}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_a_distillation_recipe_file_is_a_job_file_and_any_hyperparameter_a_key(tmp_path):
    from flows.jobs import DistillJob
    from pipeline.distill.config import DistillConfig

    recipe = REPO / "configs" / "distill" / "tiny-cpu.yaml"
    job = load_config(DistillJob, recipe, ["train.iterations=3", "crops.hflip_p=0"], {"tiles": ["t"], "out": "o"})
    expected = DistillConfig.from_yaml(recipe).model_dump()
    expected["train"]["iterations"], expected["crops"]["hflip_p"] = 3, 0.0
    assert job.distill_config().model_dump() == expected
    assert DistillJob(tiles=["t"], out="o").distill_config() == DistillConfig()  # the paper's Table 4
    with pytest.raises(ConfigError, match="heads.teacher_heads 'checkpoint' needs heads.teacher_heads_path"):
        load_config(DistillJob, None, ["tiles=[t]", "out=o", "heads.teacher_heads=checkpoint"])


def test_a_distillation_run_directory_of_other_hyperparameters_is_refused_before_prefect(tmp_path):
    from flows.distill import check
    from flows.jobs import DistillJob
    from pipeline.distill.config import recorded_text

    run = tmp_path / "run"
    run.mkdir()
    job = DistillJob(tiles=[str(tmp_path)], out=str(run), models={"teacher": "tiny-teacher"})
    (run / "config.yaml").write_text(recorded_text(job.distill_config()))
    check(job)  # the same hyperparameters: a resume
    with pytest.raises(UserInputError, match="holds a run with other hyperparameters"):
        check(job.model_copy(update={"train": job.train.model_copy(update={"iterations": 5})}))


def test_robustness_ks_default_is_the_library_s():
    from flows.jobs import RobustnessJob
    from pipeline.robustness.pairs import DEFAULT_KS

    assert RobustnessJob(embeddings=["e"], out="o").ks == DEFAULT_KS


def test_serve_sections_from_file_crons_from_flags_and_parameters_checked_against_the_job(tmp_path):
    from flows.jobs import DEPLOYMENT_JOBS, ServeJob
    from flows.serve import _load

    config = tmp_path / "serve.yaml"
    config.write_text(
        "tile-tcga:\n  cron: '0 2 * * *'\n  parameters: {slides: /s, workers: 3}\nlimit: 2\n"
        "deployments:\n  embed: {timezone: Europe/Paris}\n"
    )
    job = _load(["--config", str(config), "--cron-embed", "30 3 * * *", "--timezone", "Asia/Tokyo"], "serve")
    assert job.deployments["tile-tcga"].parameters == {"slides": "/s", "workers": 3}
    assert job.deployments["tile-tcga"].cron == "0 2 * * *" and job.limit == 2
    assert (job.deployments["embed"].cron, job.deployments["embed"].timezone) == ("30 3 * * *", "Europe/Paris")
    assert job.timezone == "Asia/Tokyo" and job.served() == list(DEPLOYMENT_JOBS)
    with pytest.raises(ConfigError, match="deployments.tile-tcga.parameters.workers: Input should be greater than 0"):
        load_config(ServeJob, None, ["tile-tcga.parameters.workers=0"])


def test_the_shipped_serve_file_is_a_valid_serve_job():
    from flows.serve import _load

    job = _load(["--config", str(REPO / "examples" / "serve.yaml")], "serve")
    assert job.deployments["embed"].parameters["model"] == "h0-mini" and job.deployments["tile-tcga"].cron


def test_the_refinement_section_is_typed_from_a_file_or_a_dotted_override(tmp_path):
    from flows.jobs import PlismJob
    from registration.config import RefinementConfig

    config = tmp_path / "job.yaml"
    config.write_text("slides: s\nout: o\nrefinement:\n  anchor_spacing_um: 300\n")
    job = load_config(PlismJob, config, ["refinement.transform=affine"])
    assert job.refinement == RefinementConfig(anchor_spacing_um=300, transform="affine")
    assert job.refinement_options() is job.refinement
    flag_only = load_config(PlismJob, None, ["slides=s", "out=o"], {"refine": True})
    assert flag_only.refinement is None and flag_only.refinement_options() == RefinementConfig()
    assert load_config(PlismJob, None, ["slides=s", "out=o"]).refinement_options() is None
    with pytest.raises(ConfigError, match=r"unknown key refinement.anchor_spacing \(did you mean refinement.anchor_s"):
        load_config(PlismJob, None, ["slides=s", "out=o", "refinement.anchor_spacing=300"])
