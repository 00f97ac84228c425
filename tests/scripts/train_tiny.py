"""Train a tiny BERT with RMLoraTrainer; used by the DDP and resume tests as a separate process (with
helpers.subprocess_env(), which puts tests/ on PYTHONPATH).

    python tests/scripts/train_tiny.py --out DIR [--method rm-lora] [--mask_mode strict] [--max_steps 6]
        [--save_steps 2] [--kill_at STEP] [--resume CHECKPOINT]
    torchrun --nproc_per_node=2 tests/scripts/train_tiny.py --out DIR ...

Each process writes DIR/rank<r>.safetensors (its trainable weights) and DIR/rank<r>_directions.json
(the directions it drew per step). --kill_at sends SIGKILL to the process itself right after that
optimizer step: a real interruption, not a flag.
"""

import argparse
import json
import os
import signal

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import TrainerCallback, TrainingArguments

from helpers import peft_bert, token_batch
from rmlora import RMLoraConfig, RMLoraTrainer
from rmlora.harness.run import end_distributed
from rmlora.methods import LoraArguments, prepare_model


class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--method", default="rm-lora")
    p.add_argument("--mask_mode", default="strict")
    p.add_argument("--max_steps", type=int, default=6)
    p.add_argument("--save_steps", type=int, default=2)
    p.add_argument("--kill_at", type=int, default=None)
    p.add_argument("--resume", default=None)
    a = p.parse_args()
    torch.use_deterministic_algorithms(True)
    rank = int(os.environ.get("RANK", "0"))
    cfg = RMLoraConfig(method=a.method, r_hat=2, mask_mode=a.mask_mode, seed=5)
    if cfg.is_lora_variant:
        model = peft_bert(r=8, seed=0)
        settings = {}
    else:
        from helpers import tiny_bert

        total = a.max_steps
        settings = {"total_steps": total, "learning_rate": 1e-2}
        if a.method == "adalora":
            from rmlora.methods.adalora import AdaLoraArguments

            settings["adalora"] = AdaLoraArguments(
                adalora_init_r=6, adalora_target_r=2, adalora_tinit=1, adalora_tfinal=1
            )
        if a.method == "sora":
            from rmlora.methods.sora import SoraArguments

            settings["sora"] = SoraArguments(sora_lambda=0.1, sora_xi=1e-3)
        model = prepare_model(
            tiny_bert(seed=0),
            cfg,
            LoraArguments(lora_r=8, target_modules="query,value", modules_to_save="classifier"),
            task_type="SEQ_CLS",
            **settings,
        )
    data = Dataset.from_dict({k: v.tolist() for k, v in token_batch(64, seed=3).items()})
    args = TrainingArguments(
        output_dir=a.out,
        per_device_train_batch_size=4,
        max_steps=a.max_steps,
        learning_rate=1e-2,
        weight_decay=0.1,
        report_to=[],
        use_cpu=True,
        seed=0,
        save_strategy="steps",
        save_steps=a.save_steps,
        logging_steps=1,
        disable_tqdm=True,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
        dataloader_num_workers=0,
    )
    callbacks = [KillAt(a.kill_at)] if a.kill_at is not None else []
    trainer = RMLoraTrainer(
        model=model, args=args, train_dataset=data, rmlora_config=cfg, callbacks=callbacks, method_settings=settings
    )
    drawn = {}
    if cfg.uses_masking:
        original = trainer.rmlora.before_optimizer_step

        def spy(optimizer, step):
            drawn[step] = {k: [v[0].tolist(), v[1].tolist()] for k, v in trainer.rmlora.directions(step).items()}
            return original(optimizer, step)

        trainer.rmlora.before_optimizer_step = spy
    trainer.train(resume_from_checkpoint=a.resume)
    weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, os.path.join(a.out, f"rank{rank}.safetensors"))
    with open(os.path.join(a.out, f"rank{rank}_directions.json"), "w") as f:
        json.dump(drawn, f)


if __name__ == "__main__":
    main()
    end_distributed()  # as `rmlora train` does, once main()'s Trainer and its DDP wrapper are out of scope
