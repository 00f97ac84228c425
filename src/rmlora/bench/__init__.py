"""Training step time and peak memory of every method, measured side by side against plain PEFT LoRA.

    rmlora bench                                   # CPU default: GPT-2-small shape (4 layers), batch 8 x 128
    rmlora bench --model bert-base --json          # on a GPU: full depth, batch 16 x 512
    python bench/step_time.py --sweep --selective  # the same command, from a checkout

One training step is what a training loop runs: forward, penalty into the loss, backward,
before_optimizer_step, AdamW step, after_optimizer_step, zero_grad. Every method trains its own copy of
one randomly initialized model of a real shape on the same batch; the frozen base weights are shared
between the adapter methods (they are never written), full fine-tuning gets its own copy. After
warm-up, the methods run interleaved repetition by repetition in a shuffled order, so that a burst of
load from another process hits all of them alike; each method's ratio to plain PEFT LoRA is the median
over repetitions of (its step time / PEFT LoRA's step time in the same repetition), with a bootstrap 95%
interval of that median (how precisely this run pins the ratio down).

Measured per method:
- median step time, wall clock and process CPU time (on a shared CPU the CPU time excludes the time the
  process waited for a core; on CUDA only the wall time means anything);
- peak memory: the bytes the method holds between steps (its model's weights including the frozen base,
  buffers, optimizer state) plus the largest extra allocation during one step (activations, gradients,
  temporaries, strict-mode snapshots). The extra allocation is torch.cuda.max_memory_allocated on CUDA
  and, on CPU, the running total of the CPU allocator's allocations recorded by torch.profiler
  (profile_memory) during one step; buffers allocated inside oneDNN/MKL are not seen on CPU;
- the hooks alone (penalty forward + backward, before/after the optimizer step) timed in isolation on
  the same model, which is the overhead rmlora adds to a LoRA step, without the noise of whole steps.

`--output FILE` saves the whole result as JSON; `--report FILE` prints a saved result's tables again.
Optional sections: `--sweep` times the hooks on synthetic LoRA models of chosen #pairs, R and width
(how the overhead grows), `--selective` times GM-LoRA's "gradients of the selected directions only"
in the LoRA branch's backward against the full backward.

The modules, in the order a run uses them: arguments (the methods, shapes and flags), models (the models and the
batch), step (one method ready to step, one training step), timing (interleaved steps, the hooks alone, the
overhead sweep), memory (peak memory, the CPU profiler-trace parser), selective (the selected-directions-only
LoRA backward), ratios (paired ratios to PEFT LoRA), run (the whole run), report (the tables). The command
line is rmlora.cli.bench.
"""
