"""The dashboard, driven through Streamlit's AppTest: pages render, widgets act, jobs finish.

Jobs run on the real process-wide worker (``ui.jobs.worker()``), on the bundled sample student
with tiny evaluation settings (2 windows of 64 tokens, no latency), so each takes seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from core import data
from core.evaluate import EvalSpec, measure_size
from core.prune.structured import StructuredSpec, params_removed
from core.recipe import Recipe, Step
from core.store import ResultStore
from tests.helpers import corpus_text
from ui import cache, jobs, results

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT_S = 60  # one script run; the first loads a sample model
JOB_TIMEOUT_S = 180  # a tiny job takes seconds; the margin is for a busy machine
TINY_EVAL = EvalSpec(max_windows=2, seqlen=64, latency=False)
PAGES = ("pages/model.py", "pages/prune.py", "pages/quantize.py", "pages/distill.py", "pages/tradeoffs.py",
         "pages/export.py")


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty results history for this test only."""
    folder = tmp_path / "results"
    monkeypatch.setenv("SQUEEZELAB_RESULTS_DIR", str(folder))
    return folder


def start(query_params: dict[str, str] | None = None) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    app.query_params.update(query_params or {})
    return app.run()


def use_student_with_tiny_eval(app: AppTest) -> AppTest:
    app.selectbox(key="model").select("sample:student")
    app.number_input(key="eval_seqlen").set_value(TINY_EVAL.seqlen)
    app.number_input(key="eval_windows").set_value(TINY_EVAL.max_windows)
    app.toggle(key="eval_latency").set_value(False)
    return app.run()


def button(app: AppTest, label: str):
    return next(b for b in app.button if b.label == label)


def metric(app: AppTest, label: str) -> str:
    return next(m.value for m in app.metric if m.label == label)


def magnitude_recipe(model: str = "sample:student", sparsity: float = 0.5) -> Recipe:
    return Recipe(model=model, steps=(Step("prune", {"method": "magnitude", "sparsity": sparsity}),),
                  evaluation=TINY_EVAL)


def finished(job_id: str) -> jobs.Job:
    job = jobs.worker().wait(job_id, JOB_TIMEOUT_S)
    assert job is not None and job.status not in jobs.ACTIVE, f"job {job_id} still {job and job.status}"
    return job


def test_app_starts_on_the_teacher(results_dir: Path) -> None:
    app = start()
    assert not app.exception
    assert app.selectbox(key="model").value == "sample:teacher"
    params = measure_size(cache.load_base("sample:teacher").model).params
    assert metric(app, "Parameters") == f"{params / 1e6:,.2f} M"
    assert app.get("plotly_chart"), "the weight histogram of the first layer is drawn"


def test_every_page_renders(results_dir: Path) -> None:
    app = start()
    expected = {
        "pages/model.py": lambda: metric(app, "Context") == "256 tokens",
        "pages/prune.py": lambda: app.selectbox(key="prune_method").value == "magnitude",
        "pages/quantize.py": lambda: app.selectbox(key="quant_method").value == "rtn",
        "pages/distill.py": lambda: app.radio(key="distill_student").value == "model",
        "pages/tradeoffs.py": lambda: "No finished results yet" in app.info[0].value,
        "pages/export.py": lambda: "No finished results yet" in app.info[0].value,
    }
    for page in PAGES:
        app.switch_page(page).run()
        assert not app.exception, f"{page}: {app.exception[0].value if app.exception else ''}"
        assert not app.error, f"{page}: {app.error[0].value}"
        assert expected[page](), page
        assert app.sidebar.selectbox(key="model").value == "sample:teacher", f"{page} ran without app.py"


def test_model_page_measures_the_baseline_and_generates(results_dir: Path) -> None:
    app = use_student_with_tiny_eval(start())
    button(app, "Measure the baseline").click().run()
    assert not app.exception
    perplexity = float(metric(app, "Perplexity").split(" ± ")[0])  # "value ± half-width of the 95% interval"
    assert 1.0 < perplexity < 4096.0  # between a perfect model and uniform guessing over the vocabulary
    assert metric(app, "Tokens scored") == f"{TINY_EVAL.max_windows * (TINY_EVAL.seqlen - 1):,}"
    button(app, "Generate (greedy)").click().run()
    generated = app.code[0].value
    assert generated.startswith(app.text_area(key="model_prompt").value) and len(generated) > len("def read_config")


def test_an_uploaded_text_is_what_gets_measured(results_dir: Path) -> None:
    app = use_student_with_tiny_eval(start())
    button(app, "Measure the baseline").click().run()
    on_sample_text = metric(app, "Perplexity")
    app.selectbox(key="eval_text").select("upload").run()
    app.file_uploader(key="eval_upload").set_value(("corpus.txt", corpus_text().encode(), "text/plain")).run()
    button(app, "Measure the baseline").click().run()
    assert not app.exception and not app.error
    assert any("Measured on uploaded corpus.txt" in c.value for c in app.caption)
    assert metric(app, "Perplexity") != on_sample_text


def test_threshold_slider_changes_the_previewed_sparsity(results_dir: Path) -> None:
    app = start().switch_page("pages/prune.py").run()
    app.radio(key="prune_amount_mode").set_value("threshold").run()
    slider = next(s for s in app.slider if s.key.startswith("prune_threshold"))
    preview = cache.threshold_preview("sample:teacher")
    shown = {}
    for value in (slider.step * 3, slider.max):
        slider.set_value(value).run()
        assert not app.exception
        shown[value] = metric(app, "Sparsity at this threshold")
        assert shown[value] == f"{preview.sparsity_at(value)[0]:.2%}"
        slider = next(s for s in app.slider if s.key.startswith("prune_threshold"))
    assert len(set(shown.values())) == 2, shown
    assert app.get("plotly_chart"), "the per-layer preview is drawn"


def test_structured_slider_previews_the_parameters_it_removes(results_dir: Path) -> None:
    app = start().switch_page("pages/prune.py").run()
    app.selectbox(key="prune_method").select("structured").run()
    model = cache.load_base("sample:teacher").model
    total = sum(p.numel() for p in model.parameters())
    for fraction in (0.25, 0.5):
        app.slider(key="prune_fraction").set_value(fraction).run()
        assert not app.exception
        removed = params_removed(model, StructuredSpec("mlp_channels", fraction))
        caption = next(c.value for c in app.caption if c.value.startswith("Removes "))
        assert f"{removed / 1e6:,.2f} M parameters, {removed / total:.1%} of the model" in caption


def test_a_magnitude_job_finishes_and_shows_on_tradeoffs(results_dir: Path) -> None:
    app = use_student_with_tiny_eval(start()).switch_page("pages/prune.py").run()
    app.selectbox(key="prune_method").select("magnitude")
    app.radio(key="prune_amount_mode").set_value("sparsity")
    app.selectbox(key="prune_pattern").select("unstructured")
    app.slider(key="prune_sparsity").set_value(0.5)
    button(app.run(), "Run").click().run()
    assert not app.exception and not app.error
    job_id = app.query_params["job"]  # the URL keeps the job for a reload

    job = finished(job_id)
    assert job.status == "done", job.error
    row = ResultStore(results_dir).get(job.result_id)
    assert row.status == "ok" and row.model == "sample:student"
    assert row.details["steps"][0]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert row.details["windows"] == TINY_EVAL.max_windows and row.details["seqlen"] == TINY_EVAL.seqlen

    reloaded = start({"job": job_id, "model": "sample:student"})  # a new session, as after a browser reload
    assert reloaded.selectbox(key="model").value == "sample:student"
    reloaded.switch_page("pages/prune.py").run()
    assert any(job.result_id in s.value for s in reloaded.success)

    app.switch_page("pages/tradeoffs.py").run()
    assert not app.exception
    assert app.get("plotly_chart")
    table = app.dataframe[0].value
    assert job.result_id in set(table["id"])
    assert app.code and "method: magnitude" in app.code[0].value  # the recipe behind the newest result


def test_a_gptq_job_packs_the_weights_and_names_its_kernel(results_dir: Path) -> None:
    app = use_student_with_tiny_eval(start()).switch_page("pages/quantize.py").run()
    app.selectbox(key="quant_method").select("gptq").run()
    app.slider(key="quant_bits").set_value(4)
    app.selectbox(key="quant_group").select(32)
    app.checkbox(key="quant_symmetric").uncheck()
    app.number_input(key="quantize_calib_samples").set_value(4)
    app.number_input(key="quantize_calib_seqlen").set_value(64)
    button(app.run(), "Run").click().run()
    assert not app.exception and not app.error
    job = finished(app.query_params["job"])
    assert job.status == "done", job.error
    row = ResultStore(results_dir).get(job.result_id)
    dense = measure_size(cache.load_base("sample:student").model)
    assert row.status == "ok" and "int4_weight_only" in row.kernel
    assert row.size_bytes < 0.6 * dense.size_bytes and row.params == dense.params  # the fp32 embedding stays
    step = row.details["steps"][0]
    assert step["kind"] == "quantize" and step["label"] == "gptq w4 g32 asym"
    assert all(layer["rel_error"] is not None and layer["sqnr_db"] > 10 for layer in step["layers"])

    app.switch_page("pages/tradeoffs.py").run()
    assert not app.exception and job.result_id in set(app.dataframe[0].value["id"])
    # every result has a prompt box: its own (int4) model writes the text, with its speed and loop
    app.button(key=f"result_{job.result_id}_generate").click().run()
    assert not app.exception and not app.error
    prompt = app.text_area(key=f"result_{job.result_id}_prompt").value
    assert app.code[-1].value.startswith(prompt) and len(app.code[-1].value) > len(prompt)
    assert any("tokens/s" in caption.value and "decode:" in caption.value for caption in app.caption)


def test_a_bad_model_reference_shows_an_error(results_dir: Path) -> None:
    app = start()
    app.selectbox(key="model").select("__other__").run()
    app.text_input(key="model_ref").input("./no/such/model").run()
    assert not app.exception
    assert any("./no/such/model" in e.value for e in app.error)


def test_the_cached_base_model_is_unchanged_by_a_job(results_dir: Path) -> None:
    loaded = cache.load_base("sample:student")
    before = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    job = finished(jobs.submit(magnitude_recipe(), loaded))
    assert job.status == "done", job.error
    row = ResultStore(results_dir).get(job.result_id)
    assert row.nonzero_params < 0.8 * row.params  # the job's copy really was pruned
    after = loaded.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert cache.load_base("sample:student") is loaded


def test_a_cancelled_job_stops_and_says_so(results_dir: Path) -> None:
    worker = jobs.worker()
    job_id = worker.submit(magnitude_recipe(), cache.load_base("sample:student"))
    worker.cancel(job_id)
    job = finished(job_id)
    assert job.status == "cancelled"
    assert all(row.status == "cancelled" for row in ResultStore(results_dir).list())


def test_a_distill_job_trains_the_sample_student_and_draws_its_curves(results_dir: Path) -> None:
    app = start()
    app.number_input(key="eval_seqlen").set_value(TINY_EVAL.seqlen)
    app.number_input(key="eval_windows").set_value(TINY_EVAL.max_windows)
    app.toggle(key="eval_latency").set_value(False)
    app.run().switch_page("pages/distill.py").run()
    app.radio(key="distill_student").set_value("model")
    app.text_input(key="distill_student_ref").input("sample:student")
    app.slider(key="distill_temperature").set_value(4.0)
    app.slider(key="distill_alpha").set_value(0.7)
    app.number_input(key="distill_steps").set_value(3)
    app.number_input(key="distill_batch").set_value(2)
    app.number_input(key="distill_seqlen").set_value(64)
    app.number_input(key="distill_eval_every").set_value(1)
    button(app.run(), "Run").click().run()
    assert not app.exception and not app.error

    job = finished(app.query_params["job"])
    assert job.status == "done", job.error
    assert [record["step"] for record in job.curve] == [0, 1, 2, 3]
    row = ResultStore(results_dir).get(job.result_id)
    report = row.details["steps"][0]
    assert report["kind"] == "distill" and report["student"] == "sample:student" and report["steps_done"] == 3
    assert row.params == measure_size(cache.load_base("sample:student").model).params
    assert "temperature: 4.0" in row.recipe and "alpha: 0.7" in row.recipe

    app.run()  # the finished job: its metrics, both curves and the summary
    assert not app.exception
    assert len(app.get("plotly_chart")) == 2
    assert any("3/3 steps (completed)" in caption.value for caption in app.caption)


def test_pareto_front_keeps_only_unbeaten_points() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 2.5], "y": [9.0, 5.0, 6.0, 4.0, None]})
    assert list(results.pareto_front(frame, "x", "y")["x"]) == [1.0, 2.0, 4.0]
    # higher x is better (decode speed): only the fastest point and those with lower y survive
    assert list(results.pareto_front(frame, "x", "y", x_lower_better=False)["x"]) == [4.0]


def test_the_export_page_exports_a_stored_result_and_offers_the_zip(results_dir: Path) -> None:
    from core.recipe import pipeline

    quantized = Recipe(model="sample:student", evaluation=TINY_EVAL,
                       steps=(Step("quantize", {"method": "rtn", "bits": 4, "group_size": 32}),))
    stored = pipeline.run(quantized, ResultStore(results_dir))
    app = start().switch_page("pages/export.py").run()
    assert not app.exception and not app.error
    assert app.selectbox(key="export_result").value == stored.id
    app.radio(key="export_format").set_value("gguf").run()
    app.selectbox(key="export_gguf_type").select("Q4_0")
    app.number_input(key="export_check_windows").set_value(2)
    button(app.run(), "Export").click().run()
    assert not app.exception and not app.error
    job = finished(app.query_params["job"])
    assert job.status == "done", job.error
    row = ResultStore(results_dir).get(job.result_id)
    export = row.details["export"]
    assert export["format"] == "gguf" and export["check_passed"] and Path(export["zip_path"]).is_file()
    assert row.size_bytes == export["size_bytes"]

    app.run()  # the finished job: size, check and the download, read from disk only when clicked
    assert not app.exception
    assert metric(app, "Reload check") == "passed"
    downloads = [b for b in app.get("download_button") if b.proto.label == "Download zip"]
    assert len(downloads) == 1


# ---- what a new user sees: the model's own texts, the URL, the opt-ins, the job's page, a kept cancel ---------


def test_the_sample_models_calibrate_and_train_on_their_training_text_by_default(results_dir: Path) -> None:
    """The samples' default calibration and training text is `sample-train` in every form (not WikiText-2)."""
    forms = {"pages/quantize.py": ("quant_method", "gptq", "quantize_calib_text::"),
             "pages/prune.py": ("prune_method", "wanda", "prune_calib_text::"),
             "pages/distill.py": ("distill_student", "layer_drop", "distill_text::")}
    for model in ("sample:teacher", "sample:student"):
        app = start({"model": model})
        for page, (method_key, method, text_key) in forms.items():
            app.switch_page(page).run()
            if page == "pages/distill.py":
                app.radio(key=method_key).set_value(method).run()
            else:
                app.selectbox(key=method_key).select(method).run()
            assert not app.exception and not app.error, (page, [e.value for e in app.error])
            text = app.selectbox(key=f"{text_key}{model}")
            assert text.value == "sample-train", (model, page, text.value)
            assert "this model's default" in text.format_func(text.value)
            assert not app.warning, [w.value for w in app.warning]  # the same domain as the sample evaluation text
            recipe = next(c.value for c in app.code if "steps:" in c.value)
            assert "text: sample-train" in recipe


@pytest.mark.shared_data
@pytest.mark.skipif(not data.wikitext2_available(), reason="needs WikiText-2 in ../shared/data")
def test_a_calibration_text_from_another_domain_than_the_evaluation_text_is_a_warning(results_dir: Path) -> None:
    """The samples' training text (Python source) to calibrate, WikiText-2 to evaluate: the form says so."""
    # a bound picker keeps its option label in the URL
    app = start({"model": "sample:student", "eval_text": "WikiText-2 raw test"}).switch_page("pages/quantize.py").run()
    app.selectbox(key="quant_method").select("gptq").run()
    assert app.selectbox(key="quantize_calib_text::sample:student").value == "sample-train"
    assert any("from another domain than the evaluation text 'wikitext2'" in w.value for w in app.warning)
    app.selectbox(key="quantize_calib_text::sample:student").select("wikitext2-valid").run()
    assert not app.warning and not app.exception


def test_the_url_keeps_the_evaluation_settings(results_dir: Path) -> None:
    """Sidebar settings live in the URL's query parameters: a reload (a new session on the same URL) keeps them."""
    url = {"model": "sample:student", "eval_seqlen": "64", "eval_windows": "2", "eval_latency": "false",
           "device": "cpu", "dtype": "fp32", "eval_text": "Sample text (held-out Python source)"}
    app = start(url)
    assert not app.exception
    assert app.number_input(key="eval_seqlen").value == 64 and app.number_input(key="eval_windows").value == 2
    assert app.toggle(key="eval_latency").value is False
    assert app.selectbox(key="device").value == "cpu" and app.selectbox(key="dtype").value == "fp32"
    app.switch_page("pages/prune.py").run()
    assert any("seqlen 64, at most 2 windows" in c.value for c in app.caption)
    recipe = next(c.value for c in app.code if "steps:" in c.value)
    assert "seqlen: 64" in recipe and "max_windows: 2" in recipe and "latency: false" in recipe
    assert "dtype: fp32" in recipe and "device: cpu" in recipe


def test_the_opt_ins_are_off_until_ticked_and_recorded_in_the_recipe(results_dir: Path, tmp_path: Path) -> None:
    from tests.helpers import pickle_only_folder

    folder = str(pickle_only_folder(tmp_path / "pickled", family="llama"))
    app = start({"allow_pickle": "true", "trust_remote_code": "true"})  # a link cannot tick them
    assert app.checkbox(key="allow_pickle").value is False and app.checkbox(key="trust_remote_code").value is False
    captions = [c.value for c in app.sidebar.caption]
    assert any("npickling can run code" in c for c in captions)
    assert any("uns code from the model's repository" in c for c in captions)
    app.selectbox(key="model").select("__other__").run()
    app.text_input(key="model_ref").input(folder).run()
    assert any("pickle" in e.value for e in app.error) and any("sidebar" in i.value for i in app.info)
    app.checkbox(key="allow_pickle").check().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert metric(app, "Context") == "128 tokens"  # the model page of the pickled model
    app.switch_page("pages/prune.py").run()
    recipe = next(c.value for c in app.code if "steps:" in c.value)
    assert "allow_pickle: true" in recipe and "trust_remote_code" not in recipe
    app.switch_page("pages/model.py").run()
    app.selectbox(key="model").select("sample:student").run()  # another model: the opt-ins are cleared
    assert app.checkbox(key="allow_pickle").value is False


def test_a_job_is_shown_on_the_page_that_started_it_and_linked_from_the_others(results_dir: Path) -> None:
    app = use_student_with_tiny_eval(start()).switch_page("pages/prune.py").run()
    button(app, "Run").click().run()
    job = finished(app.query_params["job"])
    assert job.status == "done" and job.page == "pages/prune.py", job
    app.run()
    assert any(job.result_id in s.value for s in app.success)  # the panel, on its page
    assert [m.label for m in app.metric] == ["Perplexity", "Top-1 accuracy", "Zeros", "Size"]
    for page in ("pages/quantize.py", "pages/model.py", "pages/tradeoffs.py"):
        app.switch_page(page).run()
        assert not app.exception
        assert not any(job.result_id in s.value for s in app.success), f"the prune job's panel is on {page}"
        links = [link for link in app.sidebar.get("page_link") if "Prune page" in link.proto.label]
        assert links and links[0].proto.page == "prune", page  # the Prune page's URL path
    assert app.query_params["job"] == job.id  # still followed: back on the Prune page it is drawn again


def test_a_quantized_result_has_no_zeros_headline(results_dir: Path) -> None:
    quantized = Recipe(model="sample:student", evaluation=TINY_EVAL, steps=(Step("quantize", {"method": "rtn"}),))
    job = finished(jobs.worker().submit(quantized, cache.load_base("sample:student"), page="pages/quantize.py"))
    assert job.status == "done", job.error
    app = start({"job": job.id}).switch_page("pages/quantize.py").run()
    assert not app.exception
    assert [m.label for m in app.metric] == ["Perplexity", "Top-1 accuracy", "Size"]


def test_cancelling_a_distillation_keeps_its_best_student_metrics_and_curve(results_dir: Path) -> None:
    worker = jobs.worker()
    distill = Recipe(model="sample:teacher", evaluation=TINY_EVAL, steps=(Step("distill", {
        "student": "sample:student", "steps": 500, "batch_size": 2, "seqlen": 64, "eval_windows": 2,
        "eval_every": 1, "text": "sample-train"}),))
    job_id = worker.submit(distill, cache.load_base("sample:teacher"), page="pages/distill.py")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(worker.get(job_id).curve) < 3 and time.monotonic() < deadline:  # step 0 and two trained steps
        time.sleep(0.05)
    worker.cancel(job_id)
    job = finished(job_id)
    assert job.status == "cancelled" and job.result_id, job.error
    row = ResultStore(results_dir).get(job.result_id)
    assert row.status == "cancelled" and row.error is None and row.perplexity is not None and row.details
    report = row.details["steps"][0]
    assert report["stopped"] == "cancelled" and 2 <= report["steps_done"] < 500
    assert report["curve"] == job.curve and len(report["curve"]) == report["steps_done"] + 1
    assert row.params == measure_size(cache.load_base("sample:student").model).params  # the student was kept

    app = start({"job": job_id}).switch_page("pages/distill.py").run()
    assert not app.exception
    assert any(f"stored as result {row.id}" in w.value for w in app.warning)
    assert float(metric(app, "Perplexity").split(" ± ")[0]) == pytest.approx(row.perplexity, rel=0.01)
    assert len(app.get("plotly_chart")) == 2  # the curves of the steps done
    assert any(f"{report['steps_done']}/500 steps (cancelled)" in c.value for c in app.caption)


def test_the_sweep_page_offers_a_grid_and_refuses_an_empty_one(results_dir: Path) -> None:
    app = start().switch_page("pages/sweep.py").run()
    assert not app.exception and not app.error
    assert any("No sweep yet" in i.value for i in app.info)
    plan = next(i.value for i in app.info if i.value.startswith("Sweep `"))
    assert "3 trials" in plan  # the base measurement and the default grid's two trials
    assert not button(app, "Run sweep").disabled
    app.multiselect(key="sweep_grid_quantize_bits").set_value([]).run()
    assert any("grid.steps.0.quantize.bits must be a non-empty list" in e.value for e in app.error)
    assert button(app, "Run sweep").disabled
    app.radio(key="sweep_mode").set_value("search").run()
    assert not app.exception and not app.error
    assert "21 trials" in next(i.value for i in app.info if i.value.startswith("Sweep `"))  # base + a budget of 20


def test_the_sweep_page_runs_a_grid_and_shows_the_front_and_the_best_trial(results_dir: Path) -> None:
    app = use_student_with_tiny_eval(start()).switch_page("pages/sweep.py").run()
    app.multiselect(key="sweep_grid_quantize_bits").set_value([2, 8]).run()
    button(app, "Run sweep").click().run()
    assert not app.exception and not app.error
    job = finished(app.query_params["job"])
    assert job.status == "done", job.error
    assert [record["finished"] for record in job.curve] == [1, 2]  # a record per finished trial, live
    store = ResultStore(results_dir)
    name = store.sweep_rows()[0].sweep
    rows = store.sweep_rows(name)
    assert len(rows) == 3 and all(row.status == "ok" and row.model == "sample:student" for row in rows)
    best = min((r for r in rows if r.sweep_params != "{}" and r.perplexity <= 1.10 * rows[0].perplexity),
               key=lambda r: r.size_bytes)
    assert job.result_id == best.id

    app.run()
    assert not app.exception and not app.error
    assert any(s.value.startswith(f"Best acceptable trial: {best.id}") for s in app.success)
    front = next(chart for chart in app.get("plotly_chart") if "Pareto front" in chart.proto.spec)
    assert best.id in front.proto.spec and "base" in front.proto.spec
    assert any("Parcoords" in chart.proto.spec or "parcoords" in chart.proto.spec for chart in app.get("plotly_chart"))
    table = app.dataframe[0].value
    assert set(table["id"]) == {r.id for r in rows if r.sweep_params != "{}"} and table["best"].sum() == 1
    assert app.code and app.code[-1].value.strip() == best.recipe.strip()  # the best trial's recipe, to rerun or export
