rule train_model:
    """A `train:` model -> results/models/{model}/ (save_pretrained), trained on its dataset;
    an `init: random` twin is only built and saved (same architecture and tokenizer)."""
    input:
        data=training_data,
    output:
        model=f"{trained_model_dir('{model}')}/config.json",
    log:
        f"{RESULTS}/logs/train_model/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_model/{{model}}.tsv"
    # First among ready jobs: a trained model heads the longest chain of the default run.
    priority: 50
    conda:
        "../../envs/torch.yaml"
    # JOB_THREADS for a wide model; one for a small one, which is all its training uses.
    threads:
        lambda wildcards: training_threads(
            config["models"][wildcards.model]["train"]["d_model"], JOB_THREADS
        )
    resources:
        mem_mb=4000,
    params:
        spec=model_spec,
        data_spec=training_data_spec,
        # Survives a failed or interrupted job, so a rerun resumes instead of starting over.
        checkpoints=f"{RESULTS}/models/{{model}}.checkpoints",
    script:
        "../scripts/train_model.py"


# The `train:` models some run records or some switched-on module lists; others defined in
# `models` (config/config.yaml's, under a --configfile that records only its own) are not built.
TRAINED_MODELS = [name for name in MODELS_IN_USE if "train" in config["models"][name]]


rule train_model_section:
    """The report section on the models the workflow trained: quality against the
    untrained twins, training curves, the weights' digests."""
    input:
        models=[f"{trained_model_dir(name)}/config.json" for name in TRAINED_MODELS],
    output:
        curves=report(
            f"{RESULTS}/training/training_curves.png",
            caption="../report/affine_training.rst",
            category="Trained models",
        ),
        manifest=f"{RESULTS}/training/section.json",
    log:
        f"{RESULTS}/logs/train_model_section.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        formats=config["figures"]["formats"],
        dpi=config["figures"]["dpi"],
    script:
        "../scripts/train_model_section.py"


# The section is asked for only when some model is trained.
REPORT_SECTIONS += [rules.train_model_section.output.manifest] if TRAINED_MODELS else []
