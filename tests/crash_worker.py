"""Worker for ``tests/test_atomic_saves.py``: a run that is SIGKILLed by the test in the middle of writing a file.

``python tests/crash_worker.py MODE MODEL_DIR OUT_DIR READY_FILE``

* ``save_model``: train 1 step, ``save_model(OUT_DIR)`` (the good model), then ``save_model(OUT_DIR)`` again: that
  second save writes half of ``model.safetensors``, creates READY_FILE and waits to be killed.
* ``checkpoint``: train with a checkpoint every step; while checkpoint-2 writes ``optimizer.pt`` it writes half of
  it, creates READY_FILE and waits to be killed (so the kill lands mid-write, whatever the machine's speed).
"""

from __future__ import annotations

import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from safetensors.torch import save as safetensors_bytes  # noqa: E402
from transformers import LlavaForConditionalGeneration, LlavaProcessor  # noqa: E402

from hf_unlearn import GAConfig, GATrainer  # noqa: E402
from hf_unlearn.testing.toy import toy_people  # noqa: E402


def half_write_then_wait(path: str, data: bytes, ready_file: str) -> None:
    """Write the first half of ``data`` to ``path`` (flushed to the OS), signal the test, and wait to be killed."""
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        with open(ready_file + ".part", "w") as ready:
            ready.write(path)
        os.replace(ready_file + ".part", ready_file)  # the test sees the file only once it holds the path
        while True:  # the test SIGKILLs this process now
            time.sleep(1)


def main() -> None:
    mode, model_dir, out_dir, ready_file = sys.argv[1:5]
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    processor = LlavaProcessor.from_pretrained(model_dir)
    data = toy_people()
    args = GAConfig(output_dir=out_dir, per_device_train_batch_size=2, max_steps=3, learning_rate=1e-3,
                    use_cpu=True, disable_tqdm=True, logging_steps=1, seed=0, report_to="none",
                    save_strategy="steps" if mode == "checkpoint" else "no", save_steps=1)
    trainer = GATrainer(model=model, args=args, train_dataset=data["forget"], retain_dataset=data["retain"],
                        processing_class=processor)
    if mode == "save_model":
        import transformers.modeling_utils as modeling_utils

        args.max_steps = 1
        trainer.train()
        trainer.save_model(out_dir)

        def crashing_save_file(tensors, filename, metadata=None):
            half_write_then_wait(filename, safetensors_bytes(tensors, metadata=metadata), ready_file)

        modeling_utils.safe_save_file = crashing_save_file
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # the second save would write different weights
        trainer.save_model(out_dir)
    elif mode == "checkpoint":
        real_save = torch.save

        def crashing_torch_save(obj, f, *a, **kw):
            if isinstance(f, str) and f.endswith("optimizer.pt") and trainer.state.global_step == 2:
                buffer = io.BytesIO()
                real_save(obj, buffer, *a, **kw)
                half_write_then_wait(f, buffer.getvalue(), ready_file)
            return real_save(obj, f, *a, **kw)

        torch.save = crashing_torch_save
        trainer.train()
    raise SystemExit("the worker was not killed")


if __name__ == "__main__":
    main()
