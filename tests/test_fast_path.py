"""The fast path (bfloat16 autocast, torch.compile with an eager fallback, the one-cycle recipes)
and the fast profile: the paper's models at the paper's widths, checked at plan level and run end
to end at a tiny size on the CPU through the command a GPU machine uses."""

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import stitchlib
from stitchlib import build_model
from stitchlib.data import Dataset, Split
from stitchlib.experiments import EXPERIMENTS, make_plan
from stitchlib.experiments.compute import Numerics, cka_all_cuts
from stitchlib.experiments.tasks import TrainedModel
from stitchlib.models import cut_points, spine
from stitchlib.precision import autocast, check_precision, compiled
from stitchlib.similarity import linear_cka
from stitchlib.store import Store
from stitchlib.training import FAST_RECIPES, RECIPES, Recipe, train_model

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TINY_MODELS = [("resnet18", 0.0625, {}), ("preact_resnet", 0.0625, {"depth": 11}), ("myrtle", 0.0625, {}),
               ("vit", 0.0625, {"depth": 2})]


def _split(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g), 10)


def test_precision_is_checked_before_any_work(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown precision 'fp16'; valid: \['fp32', 'bf16'\]"):
        check_precision("fp16")
    with pytest.raises(ValueError, match=r"unknown precision 'fp16'; valid: \['fp32', 'bf16'\]"):
        make_plan("connectivity", "smoke", precision="fp16")
    with pytest.raises(TypeError, match="parameter 'torch_compile' must be bool"):
        make_plan("connectivity", "smoke", torch_compile="yes")
    with pytest.raises(ValueError, match=r"unknown recipes 'modern'; valid: \['appendix_a', 'short'\]"):
        make_plan("connectivity", "smoke", recipes="modern")
    # A GPU without bfloat16 arithmetic (before Ampere) is refused with what to use instead.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(ValueError, match=r"Tesla V100.*no bfloat16 arithmetic.*compute capability 8.0.*'fp32'"):
        check_precision("bf16", torch.device("cuda"))
    check_precision("bf16", torch.device("cpu"))  # a CPU has it (slowly, without AMX)


@pytest.mark.parametrize("arch, width, options", TINY_MODELS, ids=[m[0] for m in TINY_MODELS])
def test_bf16_training_keeps_float32_weights_and_moves_them_differently(arch, width, options):
    """Every architecture trains under bfloat16 autocast: its weights stay float32, finite and
    close to the float32 run's, yet not equal (the products were rounded)."""
    recipe = Recipe(steps=1, batch_size=32, lr=0.05)  # one step: the update is the gradient, compared
    runs = {}
    for precision in ("fp32", "bf16"):
        model = build_model(arch, seed=0, width=width, **options)
        train_model(model, _split(), MEAN, STD, recipe, device="cpu", precision=precision, progress=False)
        runs[precision] = model.state_dict()
    start = build_model(arch, seed=0, width=width, **options).state_dict()
    for name, value in runs["bf16"].items():
        if not value.is_floating_point():
            continue
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
    moved = [n for n in start if start[n].is_floating_point() and not torch.equal(start[n], runs["fp32"][n])]
    assert moved
    differs = [n for n in moved if not torch.equal(runs["bf16"][n], runs["fp32"][n])]
    assert differs, "bf16 autocast changed nothing"
    # Over the whole model, the bf16 update is the fp32 update up to a small relative difference.
    update = {p: torch.cat([(runs[p][n] - start[n]).flatten() for n in moved]) for p in runs}
    relative = ((update["bf16"] - update["fp32"]).norm() / update["fp32"].norm()).item()
    assert 0 < relative < 0.1, relative


def test_cka_stays_float64_under_bf16(tmp_path):
    """CKA of a bf16 run is the float64 CKA of the bf16 features (autocast never touches float64),
    and not the float32 run's."""
    a, b = (build_model("resnet18", seed=s, width=0.0625).eval() for s in (0, 1))
    images = _split(48, seed=3)
    dataset = Dataset("cifar10", images, images, [], MEAN, STD, {"name": "x", "source": "x", "sha256": "0"})
    x = (images.images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    expected, ha, hb = [], x, x
    with torch.no_grad():
        for sa, sb, _ in zip(spine(a), spine(b), cut_points(a)):
            with autocast("cpu", "bf16"):
                ha, hb = sa(ha), sb(hb)
            expected.append(linear_cka(ha.double(), hb.double()))
    assert ha.dtype == torch.bfloat16  # the last cut's features came out of autocast
    got, fp32 = (cka_all_cuts(Store(tmp_path / precision), dataset, torch.device("cpu"), a, {"key": "a"}, b,
                              {"key": "b"}, images, "exact", 48, numerics=Numerics(1, precision))
                 for precision in ("bf16", "fp32"))
    assert got == pytest.approx(expected, abs=1e-12)
    assert got != fp32 and got == pytest.approx(fp32, abs=0.05)


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    model = build_model("myrtle", seed=0, width=0.0625).eval()
    x = torch.randn(4, 3, 32, 32)
    expected = model(x)

    def unavailable(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", unavailable)
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable or failed.*no C\\+\\+ compiler.*eagerly"):
        fast = compiled(model, True)
    assert torch.equal(fast(x), expected)

    def fails_when_called(module):
        def run(*args, **kwargs):
            raise RuntimeError("inductor backend failed")
        return run

    monkeypatch.setattr(torch, "compile", fails_when_called)
    fast = compiled(model, True)
    with pytest.warns(RuntimeWarning, match="inductor backend failed"):
        assert torch.equal(fast(x), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: later calls run eagerly and quietly
        assert torch.equal(fast(x), expected)
    assert compiled(model, False) is model
    assert not list(compiled(model, True).parameters(recurse=False))


def test_the_one_cycle_schedule_rises_then_falls_to_zero():
    recipe = dataclasses.replace(FAST_RECIPES["resnet18"], steps=10)
    model = torch.nn.Linear(2, 2)
    opt, sched = recipe.build(model, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:3] == pytest.approx([0.2, 0.4, 0.4 * 8 / 9])  # warm-up over 20% of 10 steps, then linear decay
    assert lrs[-1] == 0.0 and max(lrs) == pytest.approx(0.4)
    assert set(FAST_RECIPES) == set(RECIPES)
    assert all(r.batch_size == 512 and r.schedule == "onecycle" and r.label_smoothing == 0.1
               for r in FAST_RECIPES.values())


def _trained(plan) -> list[TrainedModel]:
    return [t for t in plan.tasks() if isinstance(t, TrainedModel)]


def test_the_fast_profile_trains_the_papers_models_on_short_recipes():
    """The paper's architectures at the paper's widths (its notebooks' paper values), on the short
    recipes in bf16; smoke and paper keep Appendix A's recipes in fp32."""
    plans = {name: make_plan(name, "fast") for name in EXPERIMENTS}
    for name, plan in plans.items():
        assert plan.params.numerics() == Numerics(1, "bf16", False) and plan.params.recipes == "short", name
        for task in _trained(plan):
            base = FAST_RECIPES[task.arch]
            assert (task.recipe.schedule, task.recipe.batch_size, task.recipe.lr) == (base.schedule, 512, base.lr)
        for profile in ("smoke", "paper"):
            other = make_plan(name, profile).params
            assert other.precision == "fp32" and other.recipes == "appendix_a", (name, profile)
    models = {(t.arch, t.width, dict(t.options).get("depth")) for t in _trained(plans["connectivity"])}
    assert {("resnet18", 0.5, None), ("resnet18", 1.0, None), ("resnet18", 2.0, None), ("preact_resnet", 1.0, 164),
            ("myrtle", 1.0, None), ("vit", 1.0, 12)} <= models
    assert any(t.simclr_epochs for t in _trained(plans["ssl_vs_e2e"]))
    finetune = [t for t in plans["ablations"].extra if t.frozen is not None]
    assert len(finetune) > 100 and all((t.arch, dict(t.options)["depth"], t.width) == ("preact_resnet", 164, 1.0)
                                       for t in finetune)
    # The same sizes as the paper where the figures need them: the full splits, three seed pairs.
    for name, plan in plans.items():
        p, paper = plan.params, make_plan(name, "paper").params
        assert (p.train_samples, p.seeds) == (paper.train_samples, paper.seeds) == (50000, [0, 1, 2, 3, 4, 5])


def test_a_gpu_profile_on_a_cpu_says_how_long_it_would_take(tmp_path):
    with pytest.warns(UserWarning, match=r"the fast profile is sized for GPUs: 01_connectivity's plan is about "
                                         r"[\d.,]+ PFLOP, roughly [\d.,]+ hours on this CPU"):
        stitchlib.setup("connectivity", profile="fast", device="cpu", store=str(tmp_path / "store"),
                        figures_dir=str(tmp_path / "figures"), executor="serial")


def _run_fast_tiny(tmp_path, *args):
    figures = tmp_path / "figures"
    command = [sys.executable, "-m", "stitchlib", "run", *args, "--profile", "fast", "--device", "cpu",
               "-f", str(ROOT / "tests" / "fast_tiny.yaml"), "--store", str(tmp_path / "store"),
               "--figures", str(figures), "--executor", "local"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    configs = [json.loads(p.read_text())["config"] for p in (tmp_path / "store" / "model").glob("*.json")]
    return done, json.loads((figures / "run.json").read_text()), configs


def test_the_fast_profile_trains_in_bf16_end_to_end_on_a_cpu(tmp_path):
    """The fast profile's own numerics through the command a GPU machine runs, on one notebook:
    every model trained by the fast path (bf16, the one-cycle recipe). One notebook because bf16
    has no native kernels on an AVX2-only CPU: 4.5x slower than fp32 there (2026-12-01)."""
    done, record, configs = _run_fast_tiny(tmp_path, "01", "-y", "architectures: {}")
    assert record["numerics"] == {"threads": 1, "precision": "bf16", "compile": False}
    assert configs and all(c["precision"] == "bf16" for c in configs)
    assert {c["recipe"]["schedule"] for c in configs if "recipe" in c} == {"onecycle"}
    assert "== 01_connectivity: tables, figures and claims" in done.stdout


def test_the_fast_profile_runs_end_to_end_on_a_cpu_at_a_tiny_size(tmp_path):
    """The command a GPU machine runs (no papermill, Jupyter or Ray needed: the local executor),
    at tests/fast_tiny.yaml's sizes: every notebook's tables, claims and figures, and run.json. In
    fp32 (bf16 end to end: the test above), the structure being what is under test here."""
    figures = tmp_path / "figures"
    done, record, configs = _run_fast_tiny(tmp_path, "all", "-p", "precision", "fp32")
    assert record["profile"] == "fast" and record["executor"] == "local"
    assert record["numerics"] == {"threads": 1, "precision": "fp32", "compile": False}
    assert record["device_name"] and record["torch"] == torch.__version__
    assert {"start-up", "compute", "total"} <= set(record["seconds"]) and len(record["claims"]) == 5
    for e in EXPERIMENTS.values():
        assert (figures / f"{e.notebook}_claims.csv").is_file() and (figures / f"{e.notebook}.csv").is_file()
        assert f"== {e.notebook}: tables, figures and claims" in done.stdout
    pngs = {p.stem for p in figures.glob("*.png")}
    assert {"fig2a_connectivity", "fig5_cka", "fig6_ssl_vs_e2e", "fig3a_label_noise", "fig2c_samples",
            "fig3b_training_time", "fig3c_width", "fig7_more_cka", "fig9_freeze", "fig4_kernel_size",
            "fig8_finetuning"} <= pngs
    # Every model was trained by the fast path's recipes: the one-cycle schedule.
    assert configs and all(c["precision"] == "fp32" for c in configs)
    assert {c["recipe"]["schedule"] for c in configs if "recipe" in c} == {"onecycle"}
    assert {c["arch"] for c in configs} == {"resnet18", "preact_resnet", "myrtle", "vit"}


def test_estimates_take_the_newest_h200_measurement_of_the_fast_path(tmp_path, monkeypatch):
    from stitchlib.experiments import core

    monkeypatch.setattr(core, "REPO_ROOT", tmp_path)
    assert core.fast_path_speedup() == (4.0, "the target of issue 13, not yet measured")

    def report(path, ratio, **kw):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"device": "NVIDIA H200", "tiny": False, **kw,
                                    "resnet18_w1": {"ratio_best_over_fp32": ratio}}))

    report(tmp_path / "bench" / "results" / "gpu_throughput_2026-12-03.json", 4.6)
    report(tmp_path / "results" / "fast-h200-2026-12-05" / "gpu_throughput.json", 5.2)
    report(tmp_path / "results" / "fast-h200-2026-12-07" / "gpu_throughput.json", 9.9, tiny=True)  # a CPU check
    assert core.fast_path_speedup() == (5.2, "measured in results/fast-h200-2026-12-05/gpu_throughput.json")
    plan = make_plan("connectivity", "fast")
    assert plan.wall_hours(1, speedup=5.2) == pytest.approx(plan.wall_hours(1) / 5.2)
